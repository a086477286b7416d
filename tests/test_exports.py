"""The public surface, pinned: what each public module exports, and what those names reveal.

In the way of trio's ``test_exports``: every public module imports, its ``__all__`` is exactly its
public names and star-imports, classes are ``@final`` unless they are meant to be subclassed, and
no private type shows through a public signature. Public docstrings cite no private module or
constant, and every public async function says what holds after Cancelled.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import pkgutil
import re
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest

import trio_chatbridge

PUBLIC_MODULES = sorted(
    [
        "trio_chatbridge",
        *(
            info.name
            for info in pkgutil.walk_packages(trio_chatbridge.__path__, "trio_chatbridge.")
            if not any(part.startswith("_") for part in info.name.split("."))
        ),
    ]
)

# Meant to be subclassed, with the reason; every other public class is @final.
EXTENSION_POINTS = {
    "trio_chatbridge.connectors.Connector": "what a platform implements",
    "trio_chatbridge.connectors.ReplyStream": "what a platform's reply streams implement",
    "trio_chatbridge.connectors.BufferedReplyStream": "a platform's collect-then-send stream",
    "trio_chatbridge.connectors.CoalescingStream": "a platform's growing-reply stream",
    "trio_chatbridge.connectors.PollCore": "a protocol: what a long-poll core implements",
    "trio_chatbridge.connectors.WebSocketCore": "a protocol: what a platform's sans-I/O core is",
    "trio_chatbridge.connectors.WebSocket": "a protocol: what an OpenWebSocket yields",
    "trio_chatbridge.stores.Store": "what a store implements",
    "trio_chatbridge.stores.MemoryStore": "wrapped by tests to record or slow down calls",
    "trio_chatbridge.stores.SQLiteStore": "wrapped by tests to record or slow down calls",
    "trio_chatbridge.testing.FakeConnector": "tests subclass it to inject faults",
    "trio_chatbridge.testing.Emulator": "a protocol: what every emulator implements",
}


def public_names(module: types.ModuleType) -> set[str]:
    """The names a module shows: neither private nor one of its submodules."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and name != "annotations"
        and not isinstance(value, types.ModuleType)
    }


def exported() -> Iterator[tuple[str, Any]]:
    """Every name in every public module's ``__all__``, as (dotted name, object)."""
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", ()):
            yield f"{name}.{attr}", getattr(module, attr)


def test_the_public_modules_are_the_documented_ones() -> None:
    assert PUBLIC_MODULES == [
        "trio_chatbridge",
        "trio_chatbridge.connectors",
        "trio_chatbridge.platforms",
        "trio_chatbridge.platforms.lark",
        "trio_chatbridge.platforms.wecom",
        "trio_chatbridge.platforms.weixin",
        "trio_chatbridge.stores",
        "trio_chatbridge.testing",
    ]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    listed = getattr(module, "__all__", [])
    assert len(listed) == len(set(listed)), "a name is listed twice"
    assert set(listed) == public_names(module)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_star_import_brings_all_and_nothing_else(name: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"from {name} import *", namespace)
    namespace.pop("__builtins__")
    module = importlib.import_module(name)
    assert set(namespace) == set(getattr(module, "__all__", []))


def test_exported_classes_and_functions_come_from_the_package() -> None:
    for dotted, obj in exported():
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("trio_chatbridge."), dotted


def test_classes_not_meant_for_subclassing_are_final() -> None:
    classes = {d: obj for d, obj in exported() if inspect.isclass(obj)}
    assert set(EXTENSION_POINTS) <= set(classes), "an extension point is no longer public"
    extension_points = {id(classes[d]) for d in EXTENSION_POINTS}
    open_ = sorted(
        dotted
        for dotted, cls in classes.items()
        if id(cls) not in extension_points
        and not issubclass(cls, (BaseException, enum.Enum))  # an enum with members is final
        and not getattr(cls, "__final__", False)
    )
    assert open_ == []
    # and the extension points really are open
    assert not [d for d in EXTENSION_POINTS if getattr(classes[d], "__final__", False)]


def test_a_reply_is_built_by_the_library_only() -> None:
    with pytest.raises(TypeError, match="built by the library"):
        trio_chatbridge.Reply()  # type: ignore[call-arg]


def types_in(annotation: Any) -> Iterator[type]:
    """Every class an annotation mentions, through unions, generics and callables."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        yield annotation
    origin = typing.get_origin(annotation)
    if isinstance(origin, type):
        yield origin
    for arg in typing.get_args(annotation):
        if isinstance(arg, list):  # Callable[[A, B], C]
            for item in arg:
                yield from types_in(item)
        else:
            yield from types_in(arg)


def signatures(obj: Any) -> Iterator[tuple[str, Any]]:
    """The annotated callables and classes a public object shows, with a label for each."""
    if inspect.isfunction(obj):
        yield obj.__qualname__, obj
        return
    if not inspect.isclass(obj):
        return
    yield obj.__qualname__, obj
    for name, member in vars(obj).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property):
            member = member.fget
        if inspect.isfunction(member):
            yield f"{obj.__qualname__}.{name}", member


def every_class_by_name() -> dict[str, Any]:
    """Every class the package defines, by name: names imported only for type checkers."""
    found: dict[str, Any] = {}
    for info in pkgutil.walk_packages(trio_chatbridge.__path__, "trio_chatbridge."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == info.name:
                found.setdefault(name, value)
    return found


def test_no_private_type_shows_through_a_public_signature() -> None:
    public = {id(obj) for _, obj in exported()}
    # coredis too: RedisStore imports it for type checkers only (see tests/test_imports.py)
    fallback = {**every_class_by_name(), "coredis": importlib.import_module("coredis")}
    leaks = []
    for dotted, obj in exported():
        for label, target in signatures(obj):
            module = inspect.getmodule(target) or inspect.getmodule(obj)
            namespace = {**fallback, **(vars(module) if module else {})}
            hints = typing.get_type_hints(target, namespace)
            for name, annotation in hints.items():
                if name.startswith("_"):
                    continue  # private attributes of a public class
                for cls in types_in(annotation):
                    if cls.__module__.startswith("trio_chatbridge") and id(cls) not in public:
                        leaks.append(f"{dotted}: {label} {name}: {cls.__qualname__}")
    assert leaks == [], "\n".join(leaks)


def public_docstrings() -> Iterator[tuple[str, str]]:
    """Every public module's docstring, and those of every exported name and its public
    methods and properties (as ``pydoc`` and the API reference show them)."""
    for name in PUBLIC_MODULES:
        yield name, importlib.import_module(name).__doc__ or ""
    for dotted, obj in exported():
        for label, target in signatures(obj):
            yield f"{dotted} ({label})", inspect.getdoc(target) or ""
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if isinstance(member, property) and not attr.startswith("_"):
                    yield f"{dotted}.{attr}", inspect.getdoc(member) or ""


PRIVATE_PATH = re.compile(r"(?<![\w])(?:[A-Za-z]\w*\.)*_[a-z][a-z0-9_]*(?:\.py\b|\.[A-Za-z_]\w*)")
"""A dotted name through a private module (``_receive.MAX_HANDLERS``, ``_protocol.py``)."""
QUOTED = re.compile(r"``~?([\w.]+)``|:\w+:`~?([\w.]+)`")


def private_constants() -> set[str]:
    """The upper-case module-level names of the package's private modules that no public
    module exports: what a reader of the public docs cannot look up."""
    public = {dotted.rsplit(".", 1)[1] for dotted, _ in exported()}
    found = set()
    for info in pkgutil.walk_packages(trio_chatbridge.__path__, "trio_chatbridge."):
        if info.name.endswith("__main__"):
            continue
        for name in vars(importlib.import_module(info.name)):
            if re.fullmatch(r"[A-Z][A-Z0-9_]+", name) and name not in public:
                found.add(name)
    return found


def test_no_public_docstring_names_a_private_module_or_constant() -> None:
    hidden = private_constants()
    assert {"PUT_GRACE", "MAX_HANDLERS", "BACKLOG"} <= hidden  # the check can see them
    cited = []
    for where, doc in public_docstrings():
        cited += [f"{where}: {m.group(0)}" for m in PRIVATE_PATH.finditer(doc)]
        for match in QUOTED.finditer(doc):
            name = (match.group(1) or match.group(2)).rsplit(".", 1)[-1]
            if name in hidden:
                cited.append(f"{where}: {match.group(0)} (say its value and meaning instead)")
    assert cited == []


def test_lark_exports_what_a_bot_author_uses_and_no_codec() -> None:
    from trio_chatbridge.platforms import lark

    assert sorted(lark.__all__) == [
        "CardAnswer",
        "ClientConfig",
        "EditBudget",
        "FEISHU",
        "HTTPRefusedError",
        "HTTPStatusError",
        "LARK",
        "LarkAnswerError",
        "LarkError",
        "LongConnection",
        "OpenAPI",
        "to_message",
    ]


def test_every_platform_error_is_on_one_branch() -> None:
    from trio_chatbridge.platforms import lark, wecom, weixin

    refusals = [
        weixin.ILinkError("sendmessage", ret=-2, errmsg="bad"),
        wecom.WeComError("aibot_respond_msg", 6000, "conflict"),
        lark.LarkError("send", 230002, "bot not in chat"),
    ]
    assert [(type(e).platform, e.code) for e in refusals] == [
        ("weixin", -2),
        ("wecom", 6000),
        ("lark", 230002),
    ]
    for error in refusals:
        assert isinstance(error, trio_chatbridge.PlatformError)
    # a WeCom refusal of a reply is still a failed send
    assert isinstance(refusals[1], trio_chatbridge.SendError)


def test_http_failures_are_one_pair_of_classes_everywhere() -> None:
    from trio_chatbridge.platforms import lark, weixin

    cb = trio_chatbridge
    assert weixin.HTTPStatusError is lark.HTTPStatusError is cb.HTTPStatusError
    assert weixin.HTTPRefusedError is lark.HTTPRefusedError is cb.HTTPRefusedError
    assert issubclass(cb.HTTPStatusError, cb.ConnectorError)  # transient: retried
    assert issubclass(cb.HTTPRefusedError, cb.PlatformError)
    assert not issubclass(cb.HTTPRefusedError, cb.ConnectorError)


def test_a_platform_error_built_from_a_string_has_its_fields() -> None:
    error = trio_chatbridge.PlatformError("LINE refused the push", platform="line", code=429)
    assert (error.platform, error.code, str(error)) == ("line", 429, "LINE refused the push")
    plain = trio_chatbridge.PlatformError("refused")
    assert (plain.platform, plain.code) == ("", None)
    # a subclass's own platform stays unless one is given
    from trio_chatbridge.platforms import lark

    assert lark.LarkError("send", 230002, "bot not in chat").platform == "lark"


# Every module's public coroutine functions (and async context managers) must say what holds
# after Cancelled, as trio's channel methods do; a new module is checked as soon as it exists.
CANCELLATION_STATED = [
    info.name
    for info in pkgutil.walk_packages(trio_chatbridge.__path__, "trio_chatbridge.")
    if not info.name.endswith("__main__")
]


def is_async(function: Any) -> bool:
    """A coroutine function, or an async context manager made from an async generator."""
    inner = inspect.unwrap(function)
    return inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner)


def public_async_functions(name: str) -> Iterator[tuple[str, Any]]:
    """The public async functions a module defines, and the public async methods of its
    public classes (as found on the class, so an inherited docstring counts)."""
    module = importlib.import_module(name)
    for attr, obj in vars(module).items():
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isfunction(obj) and is_async(obj):
            yield f"{name}.{attr}", obj
        elif inspect.isclass(obj):
            for method in vars(obj):
                member = getattr(obj, method)
                if not method.startswith("_") and inspect.isfunction(member) and is_async(member):
                    yield f"{name}.{attr}.{method}", member


def test_every_public_async_function_says_what_holds_after_cancellation() -> None:
    found = {
        dotted: inspect.getdoc(function) or ""
        for name in CANCELLATION_STATED
        for dotted, function in public_async_functions(name)
    }
    assert len(found) > 120  # the list really reaches them (stores, emulators, the bridge)
    silent = sorted(dotted for dotted, doc in found.items() if "cancel" not in doc.lower())
    assert silent == []


@pytest.mark.parametrize("name", ["Connector", "ConnectorContext", "ReplyStream", "long_poll"])
def test_a_connector_authors_name_asked_of_the_package_says_where_it_is(name: str) -> None:
    """``cb.Connector`` is in ``trio_chatbridge.connectors`` (docs/connectors.md): the
    package says so, where Python suggested the private module (``Did you mean:
    '_connector'?``: it suggests from the error's ``name``, which this one leaves out, and
    adds a name only to an error without ``obj``)."""
    with pytest.raises(AttributeError) as caught:
        getattr(trio_chatbridge, name)
    assert str(caught.value) == (
        f"module 'trio_chatbridge' has no attribute {name!r}: it is for connector authors, "
        f"in trio_chatbridge.connectors (from trio_chatbridge.connectors import {name})"
    )
    assert caught.value.name is None and caught.value.obj is trio_chatbridge
    assert not hasattr(trio_chatbridge, name)  # not exported: the surface stays as pinned


def test_any_other_missing_name_is_python_s_own_error() -> None:
    """With its ``name`` and ``obj``, from which Python suggests ``Did you mean: 'Bridge'?``."""
    with pytest.raises(AttributeError) as caught:
        trio_chatbridge.Bridgee  # type: ignore[attr-defined]  # noqa: B018
    assert str(caught.value) == "module 'trio_chatbridge' has no attribute 'Bridgee'"
    assert caught.value.name == "Bridgee" and caught.value.obj is trio_chatbridge
