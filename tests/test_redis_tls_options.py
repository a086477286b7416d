"""A ``rediss://`` URL's TLS options, hostile or odd, refused when the store is built, saying
why. A client key with a pass phrase (``ssl_keyfile``): never by a prompt. OpenSSL, given no
password, asks for one on the terminal ("Enter PEM pass phrase:"): ``trio-chatbridge run`` or
``check`` started from a shell waited there, and under systemd (no terminal) the error said
only "[Errno 22] Invalid argument"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

import trio_chatbridge as cb
from trio_chatbridge.stores import store_from_url

pty = pytest.importorskip("pty")  # (Unix)


@pytest.fixture
def encrypted_client(tmp_path: Path) -> str:
    """A URL with a client certificate whose key has a pass phrase."""
    client = trustme.CA().issue_cert("bridge@example.test")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    locked = serialization.BestAvailableEncryption(b"pass phrase")
    (tmp_path / "client.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, locked)
    )
    return (
        f"rediss://h:1/0?ssl_certfile={tmp_path / 'client.pem'}"
        f"&ssl_keyfile={tmp_path / 'client.key'}"
    )


def test_a_key_with_a_pass_phrase_is_refused_saying_so(encrypted_client: str) -> None:
    with pytest.raises(cb.ConfigurationError, match="pass phrase"):
        store_from_url(encrypted_client)


def test_a_key_with_a_pass_phrase_never_waits_at_a_prompt(encrypted_client: str) -> None:
    """Built in a process whose standard input is a terminal (a shell's): it ended at once."""
    code = (
        "import trio_chatbridge.stores as s\n"
        f"try: s.store_from_url({encrypted_client!r})\n"
        "except Exception as e: print(type(e).__name__)\n"
    )
    terminal, its_end = pty.openpty()
    try:
        child = subprocess.run(
            [sys.executable, "-c", code],
            stdin=its_end,
            capture_output=True,
            start_new_session=True,  # no controlling terminal: OpenSSL reads standard input
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("building the store waited at OpenSSL's pass phrase prompt")
    finally:
        os.close(terminal)
        os.close(its_end)
    assert child.stdout.decode().strip() == "ConfigurationError"
    assert b"pass phrase" not in child.stderr


@pytest.mark.parametrize("option", ["ssl_check_hostname", "ssl_cert_reqs"])
def test_a_blank_tls_option_in_a_store_url_is_refused_as_from_url_refuses_it(option: str) -> None:
    """``RedisStore.from_url`` refuses ``ssl_check_hostname=`` (blank), but the config's
    ``store_from_url`` read the query without blank values (stores/_url.py ``parse_qsl``) and
    dropped it: the same URL was refused or taken depending on where it was written."""
    url = f"rediss://h:1/0?{option}="
    with pytest.raises(cb.ConfigurationError, match=option):
        cb.RedisStore.from_url(url)
    with pytest.raises(cb.ConfigurationError, match=option):
        store_from_url(url)


def test_a_blank_prefix_in_a_store_url_is_refused_not_taken_for_a_keyspace_of_its_own() -> None:
    """Before blank values were kept, ``prefix=`` was dropped (the default prefix); taken now
    as written, it would be a new, empty keyspace: a bridge starting without its journal."""
    with pytest.raises(cb.ConfigurationError, match="prefix is blank"):
        store_from_url("redis://127.0.0.1:1/0?prefix=")
