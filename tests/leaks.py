"""The check every test runs under (conftest.py): no configured secret in any log record or
in the repr of any public object the test made, and no credential-bearing URL in any record."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PUBLIC_MODULES = (
    "trio_chatbridge",
    "trio_chatbridge.stores",
    "trio_chatbridge.testing",
    "trio_chatbridge.platforms.weixin",
    "trio_chatbridge.platforms.wecom",
    "trio_chatbridge.platforms.lark",
)
# Constructor parameters that configure a secret (token, secret, app_secret, encoding_aes_key).
# (A ``context_token`` or a media ``aes_key`` is not one: each comes with a message.)
SECRET_PARAMETER = re.compile(r"(token|secret|app_secret|encoding_aes_key|password)")
SHORTEST_SECRET = 8  # characters: shorter test values ("token") are ordinary words in logs
# A query parameter that carries a credential, or a URL user part's password, not redacted.
CREDENTIAL_IN_URL = re.compile(
    r"[?&](access_key|ticket|encrypted_query_param)=(?!\*\*\*)[^&\s'\"]"
    r"|\b(?i:https?|wss?|rediss?)://[^:@/\s]*:(?!\*\*\*@)[^@/\s]+@"  # a user part's password
)

COMPACT_AT = 1024  # references to what a test made, at least, before dead ones are dropped


def _public_classes() -> list[type]:
    """Our public classes that hold configuration (message values aside: they come from the
    network, and there are many of them)."""
    found: dict[int, type] = {}
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and value.__module__.startswith("trio_chatbridge")
                and value.__module__ != "trio_chatbridge._messages"
                and not issubclass(value, BaseException)
                and "__init__" in vars(value)
            ):
                found[id(value)] = value
    return list(found.values())


PUBLIC_CLASSES = _public_classes()


class SecretWatch(logging.Handler):
    """Sees every record of every logger; keeps those that show a configured secret or a
    credential-bearing URL."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.secrets: set[str] = set()
        # What the test made, weakly where the class allows: holding every object would keep
        # each reply (and through it its batch's messages and their payloads) alive for the
        # whole test, which the soak measures as the bridge's memory.
        self._made: list[Callable[[], object | None]] = []
        self._compact_at = COMPACT_AT  # dead references are dropped when the list reaches this
        self.leaks: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if CREDENTIAL_IN_URL.search(text) or any(s in text for s in self.secrets):
            self.leaks.append(f"log record: {text[:300]}")

    def check_repr(self, obj: object) -> None:
        """Note a leak if ``obj``'s repr shows a secret configured so far."""
        text = repr(obj)
        if any(s in text for s in self.secrets):
            self.leaks.append(f"repr of a {type(obj).__name__}: {text[:300]}")

    def made(self) -> list[object]:
        """The objects made under watch that are still alive."""
        alive = [ref() for ref in self._made]
        return [obj for obj in alive if obj is not None]

    def watching(self, cls: type) -> Callable[..., None]:
        """``cls.__init__``, noting the object made and the secrets it was given."""
        original = vars(cls)["__init__"]
        try:
            signature: inspect.Signature | None = inspect.signature(original)
        except (TypeError, ValueError):
            signature = None

        @functools.wraps(original)
        def __init__(obj: object, *args: Any, **kwargs: Any) -> None:
            original(obj, *args, **kwargs)
            try:
                self._made.append(weakref.ref(obj))
            except TypeError:  # no __weakref__ slot: kept until the end of the test
                self._made.append(lambda: obj)
            if len(self._made) >= self._compact_at:  # amortized: the list at most doubles
                self._made = [ref for ref in self._made if ref() is not None]
                self._compact_at = max(COMPACT_AT, 2 * len(self._made))
            self._note_secrets(signature, obj, args, kwargs)
            if type(obj) is cls:  # fully built: checked now, as it may be gone at the end
                self.check_repr(obj)

        return __init__

    def _note_secrets(
        self, signature: inspect.Signature | None, obj: object, args: Any, kwargs: Any
    ) -> None:
        if signature is None:
            return
        try:
            bound = signature.bind(obj, *args, **kwargs)
        except TypeError:
            return
        bound.apply_defaults()
        for name, value in bound.arguments.items():
            secret = SECRET_PARAMETER.fullmatch(name) and isinstance(value, str)
            if secret and len(value) >= SHORTEST_SECRET:
                self.secrets.add(value)


@contextmanager
def kept_logger_levels() -> Iterator[None]:
    """Every logger's level as it was before, afterwards: a test that configures logging
    (``configure_logging`` sets httpx's and httpcore's loggers to DEBUG) must not leave the
    next tests creating every DEBUG record, which pytest keeps for its report (the soak
    measured them as the bridge's memory: +16 % in three rounds)."""
    manager = logging.Logger.manager
    levels = {
        name: logger.level
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    try:
        yield
    finally:
        for name, logger in list(manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels.get(name, logging.NOTSET))
