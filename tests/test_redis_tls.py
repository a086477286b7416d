"""RedisStore over TLS (``rediss://``), against a real redis-server with certificates made by
trustme: Redis's certificate is verified, and so is the host name in it, unless the URL says
otherwise; what is refused is a ConfigurationError that says what to do."""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trustme
from redis_servers import require_redis

import trio_chatbridge as cb
from trio_chatbridge.stores import store_from_url
from trio_chatbridge.testing import redis_server


@attrs.frozen
class TLSRedis:
    port: int
    ca: Path
    """The authority that issued the server's certificate (for localhost, not 127.0.0.1)."""
    client_cert: Path
    """A client certificate (and its key) from that authority."""

    def url(self, host: str = "localhost", query: str = "") -> str:
        return f"rediss://{host}:{self.port}/0{query and '?' + query}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    """A redis-server whose TLS port asks clients for a certificate only if they offer one."""
    require_redis()
    directory = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(directory / "ca.pem"))
    server = authority.issue_cert("localhost")
    server.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
    client = authority.issue_cert("bridge@example.test")
    client.private_key_and_cert_chain_pem.write_to_path(str(directory / "client.pem"))
    port = _free_port()
    files = ("--tls-cert-file", "--tls-key-file")
    options = [part for name in files for part in (name, str(directory / "server.pem"))]
    options += ["--tls-port", str(port), "--tls-ca-cert-file", str(directory / "ca.pem")]
    options += ["--tls-auth-clients", "optional"]
    with redis_server(directory, options=options):
        yield TLSRedis(port, directory / "ca.pem", directory / "client.pem")


async def _round_trip(store: cb.Store) -> str | None:
    async with store:
        await store.set("tls", "a", "k", "v")
        return await store.get("tls", "a", "k")


async def test_a_certificate_for_the_host_from_a_trusted_authority_is_accepted(
    tls_redis: TLSRedis,
) -> None:
    url = tls_redis.url(query=f"ssl_ca_certs={tls_redis.ca}")
    assert await _round_trip(cb.RedisStore.from_url(url, timeout=2)) == "v"


async def test_a_client_certificate_is_offered(tls_redis: TLSRedis) -> None:
    url = tls_redis.url(query=f"ssl_ca_certs={tls_redis.ca}&ssl_certfile={tls_redis.client_cert}")
    assert await _round_trip(store_from_url(url)) == "v"


async def test_a_certificate_from_an_unknown_authority_is_refused(tls_redis: TLSRedis) -> None:
    # no ssl_ca_certs: the system's authorities, which never issued this certificate
    with pytest.raises(cb.ConfigurationError, match="refused Redis's TLS certificate") as info:
        await _round_trip(cb.RedisStore.from_url(tls_redis.url(), timeout=2))
    assert "ssl_ca_certs" in str(info.value)


async def test_a_certificate_for_another_host_is_refused(tls_redis: TLSRedis) -> None:
    # a trusted authority, a certificate it issued, but for a name the URL does not use
    # (the certificate is for localhost, the URL says 127.0.0.1): coredis alone accepts it
    url = tls_redis.url("127.0.0.1", f"ssl_ca_certs={tls_redis.ca}")
    with pytest.raises(cb.ConfigurationError, match=re.escape("not valid for '127.0.0.1'")):
        await _round_trip(cb.RedisStore.from_url(url, timeout=2))


async def test_the_host_check_and_the_verification_can_be_turned_off_in_so_many_words(
    tls_redis: TLSRedis,
) -> None:
    unchecked = tls_redis.url("127.0.0.1", f"ssl_ca_certs={tls_redis.ca}")
    unchecked += "&ssl_check_hostname=false"
    assert await _round_trip(cb.RedisStore.from_url(unchecked, timeout=2)) == "v"
    anything = tls_redis.url(query="ssl_cert_reqs=none")
    assert await _round_trip(cb.RedisStore.from_url(anything, timeout=2)) == "v"


async def test_a_context_of_ones_own_replaces_the_url_options(tls_redis: TLSRedis) -> None:
    context = ssl.create_default_context(cafile=str(tls_redis.ca))
    store = cb.RedisStore.from_url(tls_redis.url(), timeout=2, ssl_context=context)
    assert await _round_trip(store) == "v"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("rediss://h:1/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be required or none"),
        ("rediss://h:1/0?ssl_check_hostname=perhaps", "ssl_check_hostname must be true or"),
        ("rediss://h:1/0?ssl_cert_reqs=none&ssl_check_hostname=true", "drop ssl_cert_reqs"),
        ("rediss://h:1/0?ssl_keyfile=/k.pem", "ssl_keyfile needs ssl_certfile"),
        ("rediss://h:1/0?ssl_ca_certs=/nowhere/ca.pem", "could not read the authorities"),
        ("rediss://h:1/0?ssl_certfile=/nowhere/c.pem", "could not load the client certif"),
        ("redis://h:1/0?ssl_ca_certs=/ca.pem", "has TLS options but no TLS: start it with"),
    ],
)
def test_tls_options_that_cannot_work_are_refused_when_the_store_is_built(
    url: str, says: str
) -> None:
    with pytest.raises(cb.ConfigurationError, match=says):
        store_from_url(url)


def test_tls_options_and_a_context_together_are_refused() -> None:
    with pytest.raises(cb.ConfigurationError, match="set TLS up in one place"):
        cb.RedisStore.from_url(
            "rediss://h:1/0?ssl_ca_certs=/ca.pem", ssl_context=ssl.create_default_context()
        )
