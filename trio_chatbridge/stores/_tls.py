"""The TLS settings of a ``rediss://`` URL, as one :class:`ssl.SSLContext` that verifies.

coredis, left to itself, checks the chain of Redis's certificate but not the host name in it:
any certificate a trusted authority issued for any name would do, so whoever sits between the
bridge and Redis could read and write every journal. The context made here checks both, as
:func:`ssl.create_default_context` does, unless the URL says otherwise in so many words.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import MutableMapping
from typing import Final

from .._errors import ConfigurationError

OPTIONS: Final = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
"""The query options of a Redis URL that set up TLS (the names redis-py and coredis use)."""

_REQUIRED: Final = {"required": True, "optional": True, "none": False}
"""``ssl_cert_reqs`` values: whether the certificate is verified. For a client, Python treats
``optional`` as ``required`` (a server always shows a certificate), and so does this."""
_BOOLEANS: Final = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def tls_context(options: MutableMapping[str, str], shown: str) -> ssl.SSLContext:
    """The context for the TLS ``options`` of the URL ``shown`` (taken out of ``options``).

    - ``ssl_ca_certs``: a PEM file, or a directory of them named by hash (``c_rehash``), of
      the authorities to trust (default: the system's);
    - ``ssl_certfile`` and ``ssl_keyfile``: a client certificate and its key, for a Redis that
      asks for one (``tls-auth-clients``); the key may be in the certificate's file;
    - ``ssl_check_hostname`` (default ``true``): whether the URL's host must be a name (or
      address) the certificate is for;
    - ``ssl_cert_reqs`` (default ``required``): ``none`` accepts any certificate, which
      encrypts but lets anyone in between read and write; it implies no host name check.

    Raises :class:`ConfigurationError` naming a bad value or a file that could not be read.
    """
    reqs = options.pop("ssl_cert_reqs", "required").lower()
    check = options.pop("ssl_check_hostname", None)
    ca_certs = options.pop("ssl_ca_certs", None)
    certfile = options.pop("ssl_certfile", None)
    keyfile = options.pop("ssl_keyfile", None)
    if reqs not in _REQUIRED:
        raise ConfigurationError(
            f"Redis URL {shown!r}: ssl_cert_reqs must be required or none, got {reqs!r}"
        )
    verify = _REQUIRED[reqs]
    if check is not None and check.lower() not in _BOOLEANS:
        raise ConfigurationError(
            f"Redis URL {shown!r}: ssl_check_hostname must be true or false, got {check!r}"
        )
    check_hostname = verify if check is None else _BOOLEANS[check.lower()]
    if check_hostname and not verify:
        raise ConfigurationError(
            f"Redis URL {shown!r}: ssl_check_hostname=true needs the certificate verified; "
            "drop ssl_cert_reqs=none"
        )
    if keyfile is not None and certfile is None:
        raise ConfigurationError(
            f"Redis URL {shown!r}: ssl_keyfile needs ssl_certfile (the certificate it is for)"
        )
    try:
        if ca_certs is not None and os.path.isdir(ca_certs):  # hashed names (c_rehash)
            context = ssl.create_default_context(capath=ca_certs)
        else:
            context = ssl.create_default_context(cafile=ca_certs)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"Redis URL {shown!r}: could not read the authorities in ssl_ca_certs "
            f"{ca_certs!r}: {exc}"
        ) from None
    if certfile is not None:
        try:
            # A key with a pass phrase would have OpenSSL ask for it on the terminal (a
            # service started from a shell waited at "Enter PEM pass phrase:"); asked here.
            context.load_cert_chain(certfile, keyfile, password=_no_pass_phrase)
        except _Locked:
            raise ConfigurationError(
                f"Redis URL {shown!r}: the client key "
                f"{keyfile if keyfile is not None else certfile!r} has a pass phrase; give "
                "the key unencrypted (readable by the service's user only), or build the "
                "store with RedisStore.from_url(..., ssl_context=) from a context that "
                "loaded it"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"Redis URL {shown!r}: could not load the client certificate {certfile!r}"
                f"{'' if keyfile is None else f' with the key {keyfile!r}'}: {exc}"
            ) from None
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    return context


class _Locked(Exception):
    """The client key asked for a pass phrase (:func:`_no_pass_phrase`)."""


def _no_pass_phrase() -> str:
    """The pass phrase callback of ``load_cert_chain``: none is known, so the load fails
    here instead of OpenSSL prompting on the terminal."""
    raise _Locked
