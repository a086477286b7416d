"""The configuration file of ``trio-chatbridge run``: TOML, validated by pydantic.

Any string may take values from outside the file: ``${NAME}`` is the environment variable
``NAME`` (``${NAME:-default}`` when it may be unset), ``${file:PATH}`` the content of a file
(trailing newline dropped), for container secrets; ``$$`` is a literal ``$``. Every relative
path in the file is relative to the config file's directory: a ``${file:PATH}``, the agent's
module, and the SQLite file of ``store``. Credentials are ``SecretStr``: they never show in a
repr, a log line or an error message. Every problem is reported with its key path, all at
once.
"""

from __future__ import annotations

import importlib
import os
import re
import stat
import sys
import sysconfig
import tomllib
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeAlias
from urllib.parse import parse_qs, quote, unquote, urlsplit

import attrs
import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
)

from ._bridge import Bridge
from ._connector import Connector
from ._debounce import Debounce
from ._dispatch import Agent, refused_agent
from ._errors import ConfigurationError
from ._health import ENDPOINTS
from ._supervise import Backoff
from .stores import SQLiteStore, store_from_url

DEFAULT_STORE: Final = "sqlite:///chatbridge.db"
MAX_FILE_VALUE_BYTES: Final = 64 * 1024  # what ${file:PATH} reads at most
_REFERENCE: Final = re.compile(r"\$(?:\$|\{([^}]*)\})")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@attrs.frozen
class Problem:
    """One thing wrong with a configuration, where it is and what is wrong."""

    path: str
    """The key path, as ``connectors[0].secret``; empty for the file as a whole."""
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidConfig(ConfigurationError):
    """A configuration with problems; ``problems`` lists each (the message shows them all)."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


class _Model(BaseModel):
    # TOML has inf and nan: neither is a duration, a count or a factor anyone means.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _url_of(*schemes: str, names: tuple[str, ...] = ()) -> AfterValidator:
    """A string that is a URL with one of ``schemes`` and a host (or one of ``names``), said
    so when it is not."""
    shape = re.compile(rf"(?:{'|'.join(schemes)})://[^\s/?#]+[^\s]*")
    expected = " or ".join([*(repr(name) for name in names), f"{schemes[0]}://host[:port]/path"])

    def check(value: str) -> str:
        if value not in names and not shape.fullmatch(value):
            raise ValueError(f"{value!r} is not a URL: write {expected}")
        return value

    return AfterValidator(check)


HttpUrl: TypeAlias = Annotated[str, _url_of("https", "http")]
WebSocketUrl: TypeAlias = Annotated[str, _url_of("wss", "ws")]


class DebounceConfig(_Model):
    """``[debounce]``: see :class:`Debounce`."""

    window: float = Field(default=3.0, ge=0)
    max_delay: float | None = Field(default=20.0, ge=0)
    max_messages: int | None = Field(default=None, ge=1)


class BackoffConfig(_Model):
    """``[backoff]``: see :class:`Backoff`."""

    initial: float = Field(default=1.0, ge=0)
    maximum: float = Field(default=60.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    jitter: float = Field(default=0.2, ge=0, lt=1)
    healthy_after: float = Field(default=60.0, ge=0)


class HttpConfig(_Model):
    """``[http]``: the health, readiness and metrics server (and webhook mounts)."""

    listen: str = Field(default="127.0.0.1:8080", pattern=r"^\[?[^\s\]]*\]?:\d{1,5}$")
    """``host:port`` (port 0 picks a free one)."""

    @field_validator("listen")
    @classmethod
    def _port(cls, listen: str) -> str:
        if int(listen.rpartition(":")[2]) > 65535:
            raise ValueError("the port is above 65535")
        return listen


class LogConfig(_Model):
    """``[log]``: the logging preset (the command line's ``--log-json``/``-v`` win)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = Field(default=False, alias="json")


class WeixinConfig(_Model):
    """A WeChat iLink bot (``platform = "weixin"``)."""

    platform: Literal["weixin"]
    account: str = Field(min_length=1)
    token: SecretStr | None = None
    """None: the token ``weixin-login`` kept in the store."""
    base_url: HttpUrl | None = None
    cdn_base_url: HttpUrl | None = None

    @property
    def name(self) -> str:
        return f"weixin:{self.account}"

    def build(self) -> Connector:
        from .platforms import weixin

        return weixin.LongPoll(
            account=self.account,
            token=self.token.get_secret_value() if self.token else None,
            base_url=self.base_url,
            cdn_base_url=self.cdn_base_url or weixin.DEFAULT_CDN_BASE_URL,
        )


class WeComConfig(_Model):
    """A WeCom AI Bot on the long connection (``platform = "wecom"``)."""

    platform: Literal["wecom"]
    bot_id: str = Field(min_length=1)
    secret: SecretStr
    url: WebSocketUrl | None = None
    """The WebSocket URL (default: WeCom's own)."""

    @property
    def name(self) -> str:
        return f"wecom:{self.bot_id}"

    def build(self) -> Connector:
        from .platforms import wecom

        return wecom.LongConnection(
            bot_id=self.bot_id,
            secret=self.secret.get_secret_value(),
            url=self.url or wecom.DEFAULT_URL,
        )


class WeComWebhookConfig(_Model):
    """A WeCom AI Bot answering on a callback URL (``platform = "wecom-webhook"``), mounted on
    the ``[http]`` server at ``path``."""

    platform: Literal["wecom-webhook"]
    bot_id: str = Field(min_length=1)
    token: SecretStr
    encoding_aes_key: SecretStr
    path: str = Field(default="/wecom", pattern=r"^/\S*$")

    @property
    def name(self) -> str:
        return f"wecom:{self.bot_id}"

    def build(self) -> Connector:
        from .platforms import wecom

        return wecom.Webhook(
            bot_id=self.bot_id,
            token=self.token.get_secret_value(),
            encoding_aes_key=self.encoding_aes_key.get_secret_value(),
        )


class LarkConfig(_Model):
    """A Lark/Feishu app on the long connection (``platform = "lark"``)."""

    platform: Literal["lark"]
    app_id: str = Field(min_length=1)
    app_secret: SecretStr
    domain: Annotated[str, _url_of("https", "http", names=("feishu", "lark"))] = "feishu"
    """``"feishu"``, ``"lark"`` or a base URL."""
    bot_open_id: str | None = None

    @property
    def name(self) -> str:
        return f"lark:{self.app_id}"

    def build(self) -> Connector:
        from .platforms import lark

        domains = {"feishu": lark.FEISHU, "lark": lark.LARK}
        return lark.LongConnection(
            app_id=self.app_id,
            app_secret=self.app_secret.get_secret_value(),
            domain=domains.get(self.domain, self.domain),
            bot_open_id=self.bot_open_id,
        )


ConnectorConfig: TypeAlias = Annotated[
    WeixinConfig | WeComConfig | WeComWebhookConfig | LarkConfig,
    Field(discriminator="platform"),
]


class Config(_Model):
    """A whole configuration file (see docs/service.md for each key)."""

    agent: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    """``package.module:function``: the agent, ``async def agent(batch, reply)``."""
    store: str = DEFAULT_STORE
    """A store URL (``store_from_url``); :func:`load_config` makes a relative SQLite path
    absolute, in the configuration file's directory."""
    concurrency: int = Field(default=16, ge=1)
    on_busy: Literal["queue", "interrupt"] = "queue"
    run_timeout: float | None = Field(default=None, gt=0)
    shutdown_grace: float = Field(default=10.0, ge=0)
    close_timeout: float = Field(default=5.0, gt=0)
    queue_size: int = Field(default=1024, ge=1)
    exit_when_all_failed: bool = True
    """Exit (code 3) once every connector has failed for good, so a supervisor notices."""
    debounce: DebounceConfig = DebounceConfig()
    backoff: BackoffConfig = BackoffConfig()
    http: HttpConfig | None = None
    log: LogConfig = LogConfig()
    connectors: list[ConnectorConfig] = Field(min_length=1)
    _inline_secrets: tuple[str, ...] = PrivateAttr(default=())

    @property
    def inline_secrets(self) -> tuple[str, ...]:
        """Key paths of credentials written in the file itself rather than taken from the
        environment or a file (``${...}``): whoever can read the file has them."""
        return self._inline_secrets

    def load_agent(self) -> Agent:
        """Import the agent; :class:`ConfigurationError` says why it cannot be used."""
        module_name, _, attribute = self.agent.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
        except Exception as exc:  # the module's own code failed: say where, in one line
            said = exc.msg if isinstance(exc, SyntaxError) else exc  # its str says where too
            raise ConfigurationError(
                f"importing {module_name!r} raised {type(exc).__name__}: {said} ({_where(exc)})"
            ) from exc
        for name in attribute.split("."):
            try:
                target = getattr(target, name)
            except AttributeError:
                raise ConfigurationError(f"{module_name!r} has no {attribute!r}") from None
        refused = refused_agent(target, self.agent)
        if refused is not None:
            raise ConfigurationError(refused)
        agent: Agent = target
        return agent

    def build_bridge(self, agent: Agent, source: str = "config") -> Bridge:
        """The bridge this configuration describes (not started).

        Raises :class:`InvalidConfig` when a connector refuses its settings (a malformed key).
        """
        connectors: list[Connector] = []
        problems: list[Problem] = []
        for index, settings in enumerate(self.connectors):
            try:
                connectors.append(settings.build())
            except ConfigurationError as exc:
                problems.append(Problem(f"connectors[{index}]", str(exc)))
        if problems:
            raise InvalidConfig(source, problems)
        return Bridge(
            connectors=connectors,
            agent=agent,
            debounce=Debounce(**self.debounce.model_dump()),
            store=store_from_url(self.store),
            concurrency=self.concurrency,
            on_busy=self.on_busy,
            run_timeout=self.run_timeout,
            shutdown_grace=self.shutdown_grace,
            close_timeout=self.close_timeout,
            backoff=Backoff(**self.backoff.model_dump()),
            queue_size=self.queue_size,
        )


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, resolve and validate a configuration file, and import its agent.

    Raises :class:`InvalidConfig` listing every problem with its key path.
    """
    source = Path(path)
    raw = _read(source)
    problems: list[Problem] = []
    resolved = _resolve(raw, (), _Lookup(environ or os.environ, source.parent), problems)
    # A key whose reference failed has that one problem: what its stand-in ("") then fails
    # (a pattern, a length) would only mislead.
    unresolved = {p.path for p in problems}
    try:
        config = Config.model_validate(resolved)
    except pydantic.ValidationError as exc:
        problems.extend(p for p in _problems(exc) if p.path not in unresolved)
        raise InvalidConfig(str(source), problems) from None
    store, left = _anchored(config.store, source.parent)
    config = config.model_copy(update={"store": store})
    if left is not None:
        problems.append(Problem("store", left))
    problems.extend(
        p for p in _semantic_problems(config, source.parent) if p.path not in unresolved
    )
    if problems:
        raise InvalidConfig(str(source), problems)
    config._inline_secrets = _inline_secrets(raw, config)
    return config


def store_url_of(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> str:
    """The store the configuration file ``path`` names, as ``run`` opens it: its ``${...}``
    resolved and a relative SQLite path made the file's directory's; nothing else of the file
    is resolved or checked (``weixin-login --config`` needs the store only, not the other
    connectors' secrets). Raises :class:`InvalidConfig` saying what is wrong with ``store``."""
    source = Path(path)
    problems: list[Problem] = []
    lookup = _Lookup(environ or os.environ, source.parent)
    url = _resolve(_read(source).get("store", DEFAULT_STORE), ("store",), lookup, problems)
    if not problems and not isinstance(url, str):
        problems.append(Problem("store", "write a store URL, as sqlite:///chatbridge.db"))
    if problems:
        raise InvalidConfig(str(source), problems)
    assert isinstance(url, str)
    anchored, left = _anchored(url, source.parent)
    if left is not None:
        raise InvalidConfig(str(source), [Problem("store", left)])
    return anchored


def _read(source: Path) -> dict[str, Any]:
    """The configuration file's TOML, or :class:`InvalidConfig` saying why it cannot be read."""
    try:
        return tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidConfig(str(source), [Problem("", f"cannot read it: {exc.strerror}")]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidConfig(str(source), [Problem("", f"not valid TOML: {exc}")]) from exc


def _anchored(url: str, base: Path) -> tuple[str, str | None]:
    """``url`` with a relative SQLite path made ``base``'s, and what to do if the journal
    is still where such a path used to lead (:func:`_left_behind`; None: nothing).

    Resolved as the system resolves it (:func:`os.path.realpath`): ``..`` after a symlinked
    directory is its target's parent, as for ``${file:../x}`` (:func:`os.path.abspath` drops
    it against the link's own path, another directory). A relative ``file:`` URI keeps its
    query (``?mode=rwc``)."""
    found = _relative_sqlite(url)
    if found is None:
        return url, None
    relative, uri_query = found
    beside = Path(os.path.realpath(base / relative))
    path = str(beside) if uri_query is None else f"file:{quote(str(beside))}{uri_query}"
    return "sqlite:///" + quote(path), _left_behind(Path(relative), beside)


def _relative_sqlite(url: str) -> tuple[str, str | None] | None:
    """The path of the SQLite file ``url`` names when it is relative, with, for a ``file:``
    URI, its ``?query`` ("" without one; None for a plain path). None for anything else
    (another store, an absolute path or URI, an in-memory database, a URL that is wrong,
    which the store's check reports)."""
    try:
        store = store_from_url(url)
    except ConfigurationError:
        return None
    if not isinstance(store, SQLiteStore) or store.path == ":memory:":
        return None
    if not store.path.startswith("file:"):
        return None if os.path.isabs(store.path) else (store.path, None)
    uri = urlsplit(store.path)
    path = unquote(uri.path)
    if uri.netloc or path.startswith("/") or path in ("", ":memory:"):
        return None
    if "memory" in parse_qs(uri.query).get("mode", ()):
        return None
    return path, f"?{uri.query}" if uri.query else ""


def _left_behind(relative: Path, beside: Path) -> str | None:
    """What to do when the SQLite file ``relative`` names exists in the working directory
    (where it was kept before relative paths followed the configuration file) and not beside
    the configuration file: a start would begin an empty journal there, without the pending
    messages, cursors and tokens of the other one. None when there is nothing to move."""
    if beside.exists() or not relative.exists():
        return None
    found = relative.absolute()
    return (
        f"{found} is the journal this store named when relative paths were the working "
        f"directory's; they are the configuration file's now, so it is {beside}, which does "
        f"not exist: move the file there (with its -wal and -shm files, the service stopped), "
        f'or name it absolutely: store = "sqlite:///{quote(str(found))}"'
    )


def _inline_secrets(raw: Mapping[str, Any], config: Config) -> tuple[str, ...]:
    """The key paths of ``config``'s credentials whose text in the file has no ``${...}``."""
    found = []
    for index, settings in enumerate(config.connectors):
        written = raw["connectors"][index]
        for name, value in settings:
            text = written.get(name)
            referenced = isinstance(text, str) and any(
                m.group(1) is not None for m in _REFERENCE.finditer(text)
            )
            if isinstance(value, SecretStr) and not referenced:
                found.append(f"connectors[{index}].{name}")
    return tuple(found)


@attrs.frozen
class _Lookup:
    environ: Mapping[str, str]
    base: Path

    def __call__(self, reference: str) -> str:
        if reference.startswith("file:"):
            path = self.base / reference.removeprefix("file:")
            try:
                # Opened without blocking (a FIFO without a writer would wait for good) and
                # read only if a regular file (not /dev/zero), at most what a secret can be.
                with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
                    if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                        raise ConfigurationError(
                            f"{str(path)!r} is not a regular file: name the file that holds "
                            "the value"
                        )
                    data = file.read(MAX_FILE_VALUE_BYTES + 1)
                if len(data) > MAX_FILE_VALUE_BYTES:
                    raise ConfigurationError(
                        f"the file {str(path)!r} is over {MAX_FILE_VALUE_BYTES // 1024} KiB: "
                        "not a secret or a value; name the file that holds it"
                    )
                return data.decode("utf-8").removesuffix("\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError(f"cannot read the file {str(path)!r}: {exc}") from None
        name, has_default, default = reference.partition(":-")
        if not _ENV_NAME.fullmatch(name):
            raise ConfigurationError(
                f"${{{reference}}} is neither ${{NAME}}, ${{NAME:-default}} nor ${{file:PATH}}"
            )
        value = self.environ.get(name)
        if value is None:
            if has_default:
                return default
            raise ConfigurationError(f"the environment variable {name} is not set")
        return value


def _resolve(
    value: object, path: tuple[str | int, ...], lookup: _Lookup, problems: list[Problem]
) -> object:
    """``value`` with every ``${...}`` replaced; a reference that fails becomes a problem."""
    if isinstance(value, dict):
        return {k: _resolve(v, (*path, k), lookup, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, (*path, i), lookup, problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        try:
            return lookup(match.group(1))
        except ConfigurationError as exc:
            problems.append(Problem(_key_path(path), str(exc)))
            return ""

    return _REFERENCE.sub(substitute, value)


_PATTERN_SAID: Final = {
    "agent": "write module:function, as bot:agent (the module beside this file)",
    "listen": "write host:port, as 127.0.0.1:8080 or [::1]:8080 (port 0: any free one)",
    "path": "write a path starting with /, as /wecom",
}
"""What a key whose value does not match its pattern says, instead of pydantic's regex."""


def _problems(error: pydantic.ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        location = list(item["loc"])
        # A connector's location names the platform it was validated as: not a key of the file.
        if len(location) > 2 and location[0] == "connectors" and isinstance(location[1], int):
            del location[2]
        message = item["msg"].removeprefix("Value error, ")  # ours say what is wrong
        if item["type"] == "extra_forbidden":
            message = "unknown key (misspelt?)"
        elif item["type"] == "union_tag_invalid":
            message = "platform must be one of 'weixin', 'wecom', 'wecom-webhook', 'lark'"
        elif item["type"] == "string_pattern_mismatch":  # pydantic quotes its regex
            message = _PATTERN_SAID.get(str(location[-1]), message)
        problems.append(Problem(_key_path(location), message))
    return problems


def _semantic_problems(config: Config, base: Path) -> list[Problem]:
    """What pydantic cannot see: the store URL, the agent's import, the connectors' own checks."""
    problems = []
    try:
        store = store_from_url(config.store)
    except ConfigurationError as exc:
        problems.append(Problem("store", str(exc)))
    else:
        if isinstance(store, SQLiteStore) and (why := _unwritable(store.path)):
            problems.append(Problem("store", why))
    for key, build in (("debounce", Debounce), ("backoff", Backoff)):
        try:  # their own checks, across keys (initial <= maximum, say)
            build(**getattr(config, key).model_dump())
        except ConfigurationError as exc:
            problems.append(Problem(key, str(exc)))
    if str(base) not in sys.path:  # the agent module usually sits next to its config
        sys.path.insert(0, str(base))
    try:
        config.load_agent()
    except ConfigurationError as exc:
        problems.append(Problem("agent", str(exc)))
    first: dict[str, int] = {}
    for index, connector in enumerate(config.connectors):
        earlier = first.setdefault(connector.name, index)
        if earlier != index:
            twice = _twice(config.connectors[earlier], connector, earlier)
            problems.append(Problem(f"connectors[{index}]", twice))
    problems.extend(_mount_problems(config))
    return problems


def _mount_problems(config: Config) -> list[Problem]:
    """Webhook paths that would take the endpoint's own paths, or each other's requests: the
    mount answers first, so a probe of /healthz would reach WeCom's callback handler."""
    problems = []
    taken: dict[str, tuple[int, str]] = {}  # path without trailing slashes: (index, as written)
    for index, connector in enumerate(config.connectors):
        if not isinstance(connector, WeComWebhookConfig):
            continue
        # The endpoint's rule (_health.py): a mount takes its path and every path under it, and
        # the first mount that matches wins.
        path = connector.path.rstrip("/")
        shadowed = sorted(e for e in ENDPOINTS if e == connector.path or e.startswith(path + "/"))
        if shadowed:
            problems.append(
                Problem(
                    f"connectors[{index}].path",
                    f"{connector.path!r} would take {', '.join(shadowed)} from the endpoint: "
                    "give the webhook a path of its own, as /wecom",
                )
            )
        # So neither of two webhooks' paths may lie under the other's, trailing slashes aside.
        for other, (earlier, written) in taken.items():
            if other == path:
                said = f"{connector.path!r} is connectors[{earlier}]'s path too"
            elif path.startswith(other + "/") or other.startswith(path + "/"):
                said = f"{connector.path!r} nests with connectors[{earlier}]'s {written!r}"
            else:
                continue
            problems.append(
                Problem(
                    f"connectors[{index}].path",
                    f"{said}: one would take the other's requests; give each a path of its "
                    "own, as /wecom/a and /wecom/b",
                )
            )
            break
        taken.setdefault(path, (index, connector.path))
    return problems


def _where(exc: Exception) -> str:
    """``file, line N``: the line of the user's code that raised (a syntax error: where it
    is): the innermost frame outside Python's library, the installed packages and this one,
    so that ``os.environ["KEY"]`` points at the bot's line, not at ``<frozen os>``."""
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}, line {exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    libraries = (*{sysconfig.get_path(p) for p in _LIBRARY_PATHS}, str(Path(__file__).parent))
    theirs = [f for f in frames if not f.filename.startswith(("<", *libraries))]
    frame = (theirs or frames)[-1]
    return f"{frame.filename}, line {frame.lineno}"


_LIBRARY_PATHS: Final = ("stdlib", "platstdlib", "purelib", "platlib")


def _unwritable(path: str) -> str | None:
    """Why the SQLite file at ``path`` cannot be created or written, if it cannot: said at
    start, not as a traceback once the bridge opens it."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    file = Path(path)
    if file.is_dir():
        return f"{file} is a directory: name a file in it, as sqlite:///{file / 'chatbridge.db'}"
    if not file.parent.is_dir():
        return f"the directory {file.parent} does not exist: create it, or name another path"
    target = file if file.exists() else file.parent
    if not os.access(target, os.W_OK):
        return f"{target} is not writable by this user: change its permissions or name another path"
    return None


def _twice(first: ConnectorConfig, again: ConnectorConfig, earlier: int) -> str:
    """What to say of a connector whose account is configured already, and what to do."""
    said = f"{again.name} is configured twice (also connectors[{earlier}])"
    if {type(first), type(again)} == {WeComConfig, WeComWebhookConfig}:
        return (
            f"{said}: a WeCom bot receives either over the long connection (platform = "
            '"wecom") or at its callback URL ("wecom-webhook"), as its admin console says: '
            "keep the one it uses, or give the other connector another bot's id"
        )
    return f"{said}: one connector per account; remove one"


def _key_path(location: Sequence[str | int]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
