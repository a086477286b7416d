"""A logging preset for running a bridge as a service: one line per event, with its place.

Each line says which connector (platform, account) and which session it concerns: the
supervisor and the dispatcher set them in context variables, which Trio copies into every task
they start, and a filter copies them onto each record (``record.platform``, ``.account``,
``.session``). Dependencies that log every request at INFO (httpx, httpcore, hypercorn's
access log, trio-websocket), and coredis's retries (the store reports what fails), are quieted
to WARNING. ``json_lines=True`` writes one JSON object
per line for log collectors.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Final, TextIO

CONNECTOR: Final = contextvars.ContextVar[tuple[str, str] | None]("connector", default=None)
"""(platform, account) of the connector the current task works for."""
SESSION: Final = contextvars.ContextVar[str | None]("session", default=None)
"""The session the current task runs the agent for."""

NOISY: Final = (
    "httpx",
    "httpcore",
    "hpack",
    "hypercorn.access",
    "trio-websocket",
    "asyncio",
    "coredis",  # "Retry attempt 1 due to error: No matching script" at every start
)
"""Loggers quieted to WARNING by the preset."""
_HANDLER_NAME: Final = "trio_chatbridge"


class ContextFilter(logging.Filter):
    """Copies the connector and session of the current task onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        connector = CONNECTOR.get()
        record.platform, record.account = connector or (None, None)
        record.session = SESSION.get()
        return True


def _where(record: logging.LogRecord) -> str:
    parts = []
    platform, account = getattr(record, "platform", None), getattr(record, "account", None)
    if platform:
        parts.append(f"{platform}:{account}")
    session = getattr(record, "session", None)
    if session:
        parts.append(f"session={session}")
    return f" [{' '.join(parts)}]" if parts else ""


def _timestamp(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


def _traceback(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's traceback; the text a filter left in ``exc_text`` (redacted) if any."""
    if not record.exc_text and record.exc_info:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or ""


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [platform:account session=...] message``, one line (a traceback,
    when a record carries one, follows on its own lines)."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record)} {record.levelname:<7} {record.name}{_where(record)} "
            f"{record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + _traceback(self, record)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, platform, account, session,
    and ``traceback`` when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("platform", "account", "session"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_info:
            entry["traceback"] = _traceback(self, record)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    level: int | str = logging.INFO, *, json_lines: bool = False, stream: TextIO | None = None
) -> logging.Handler:
    """Install the preset on the root logger; returns its handler. Calling it again replaces
    the handler it installed before (never one of the application's own).

    Tracebacks of retried failures show only at DEBUG: the library logs those failures as one
    line at WARNING and the traceback separately at DEBUG.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    quiet = max(logging.WARNING, root.getEffectiveLevel())
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if root.level <= logging.DEBUG else quiet)
    return handler
