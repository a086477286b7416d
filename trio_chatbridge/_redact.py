"""Credentials kept out of log records, ours and our dependencies'.

Some URLs carry credentials in their query: the Lark WebSocket URL its access key and ticket,
WeChat's CDN URLs an ``encrypted_query_param``; and any URL a user configures or an error
quotes may carry a password in its user part (``wss://user:password@host/``,
``redis://:password@host``, ``amqp://user:password@host``), whatever its scheme.
trio-websocket logs the URL it connects to (at DEBUG) and httpx every request's (at INFO), and
an exception's text may quote one. A :class:`RedactingFilter` on those loggers and on ours
replaces every query value and every user part's password of every URL in a record's message
and exception text with ``***``. The library installs it by itself (at import, and again when a
bridge starts, for loggers made since), whatever logging setup the application has;
docs/index.md ("Logging") says so. The service's ``/readyz`` and ``check`` redact the same way.

Python runs a logger's filters only for records logged to that very logger, not its children,
so the filter goes on each logger by name: :data:`DEPENDENCY_LOGGERS`, and every
``trio_chatbridge`` logger that exists when :func:`install` runs (:func:`guard` adds it to one
made later).
"""

from __future__ import annotations

import logging
import re
from typing import Final, overload

REDACTED: Final = "***"
DEPENDENCY_LOGGERS: Final = (
    "trio-websocket",  # "Connecting to wss://host/path?query" at DEBUG
    "httpx",  # "HTTP Request: GET https://host/path?query ..." at INFO
    "httpcore",
    "hypercorn.access",
    "hypercorn.error",
)
# Any scheme (RFC 3986: a letter, then letters, digits, ``+``, ``-``, ``.``): a message may quote
# a URL of any service (``amqp://``, ``postgresql+asyncpg://``), not only ours.
_SCHEME: Final = r"\b[a-z][a-z0-9+.\-]*://"
# A URL: its scheme and authority (user part, host, port), then the rest, whose query is redacted
# (a ``;`` or ``=`` in the user part is no query).
_URL: Final = re.compile(rf"(?i)({_SCHEME}[^/?#\s'\"<>]*)([^\s'\"<>]*)")
_QUERY_VALUE: Final = re.compile(r"([?&;][^=&#\s]*=)[^&#\s]*")
# The user part runs to the LAST ``@`` before the host part ends (at ``/``, ``?``, ``#``), and
# the user name to its first ``:``, as urlsplit and coredis read them: a password may hold a
# raw ``@`` or ``:``, a user name a raw ``@``.
_PASSWORD: Final = re.compile(rf"(?i)({_SCHEME}[^:/?#\s]*:)[^/?#\s]*@")


def redact(text: str) -> str:
    """``text`` with the value of each query parameter of each URL in it, and the password
    in each URL's user part, replaced by ``***``."""
    if "://" not in text:  # the common record: nothing to look at
        return text
    text = _PASSWORD.sub(rf"\g<1>{REDACTED}@", text)
    return _URL.sub(
        lambda url: url.group(1) + _QUERY_VALUE.sub(rf"\g<1>{REDACTED}", url.group(2)), text
    )


# A JSON string field named for a secret, and its value: escapes included, one cut off
# after its backslash too.
_SECRET_FIELD: Final = (
    r'("[A-Za-z_]*(?:token|secret|key|ticket|password|param)"\s*:\s*")(?:[^"\\]|\\.?)*'
)
_SECRET_VALUE: Final = re.compile(_SECRET_FIELD, re.IGNORECASE | re.DOTALL)
_SECRET_VALUE_BYTES: Final = re.compile(_SECRET_FIELD.encode(), re.IGNORECASE | re.DOTALL)


@overload
def redact_body(body: bytes) -> bytes: ...
@overload
def redact_body(body: str) -> str: ...
def redact_body(body: bytes | str) -> bytes | str:
    """``body`` (a piece of an answer an error quotes) with the value of each JSON string
    field named for a secret (``bot_token``, ``aes_key``, ``app_secret``, ``typing_ticket``,
    ``encrypt_query_param``...) replaced by ``***``, one cut off included."""
    if isinstance(body, str):
        return _SECRET_VALUE.sub(r"\1***", body)
    return _SECRET_VALUE_BYTES.sub(rb"\1***", body)


class RedactingFilter(logging.Filter):
    """Rewrites a record whose message or exception text holds a URL with a query; lets
    every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            # Formatters use exc_text when it is set: the redacted text is what they print.
            text = logging.Formatter().formatException(record.exc_info)
            clean = redact(text)
            if clean != text:
                record.exc_text = clean
        return True


_FILTER: Final = RedactingFilter()


def guard(logger: logging.Logger) -> logging.Logger:
    """``logger``, with the redacting filter on it (added once)."""
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def install() -> None:
    """Put the filter on our dependencies' loggers and on every ``trio_chatbridge`` logger
    that exists now. Idempotent."""
    for name in DEPENDENCY_LOGGERS:
        guard(logging.getLogger(name))
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.split(".")[0] == "trio_chatbridge":
            guard(logger)
