"""The configuration file of ``run`` and ``check``, and store URLs."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trio_chatbridge as cb
from trio_chatbridge.__main__ import main
from trio_chatbridge._config import InvalidConfig, load_config
from trio_chatbridge.stores import store_from_url

AGENT = """\
import trio_chatbridge as cb


async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


def not_async(batch, reply):
    pass
"""


def write(tmp_path: Path, toml: str, *, agent_module: str = "cfgbot") -> Path:
    (tmp_path / f"{agent_module}.py").write_text(AGENT)
    path = tmp_path / "chatbridge.toml"
    path.write_text(textwrap.dedent(toml))
    return path


GOOD = """\
agent = "cfgbot:agent"
store = "memory://"
on_busy = "interrupt"
shutdown_grace = 5
close_timeout = 2.5

[debounce]
window = 1.5
max_messages = 10

[http]
listen = "127.0.0.1:0"

[[connectors]]
platform = "wecom"
bot_id = "bot-1"
secret = "${WECOM_SECRET}"
url = "${WECOM_URL:-ws://127.0.0.1:9/}"

[[connectors]]
platform = "lark"
app_id = "cli_1"
app_secret = "${file:lark_secret}"
domain = "lark"

[[connectors]]
platform = "weixin"
account = "wx"
token = "t$$ken"
"""


def test_a_good_config_builds_its_bridge(tmp_path: Path) -> None:
    (tmp_path / "lark_secret").write_text("lark-s3cret\n")
    config = load_config(write(tmp_path, GOOD), {"WECOM_SECRET": "wecom-s3cret"})
    assert config.debounce.window == 1.5 and config.http is not None
    bridge = config.build_bridge(config.load_agent())
    assert [c.name for c in bridge.connectors] == ["wecom:bot-1", "lark:cli_1", "weixin:wx"]
    assert isinstance(bridge.store, cb.MemoryStore)
    assert (bridge.on_busy, bridge.shutdown_grace, bridge.debounce.max_messages) == (
        "interrupt",
        5.0,
        10,
    )
    assert bridge.close_timeout == 2.5
    wecom, lark, weixin = config.connectors
    assert wecom.secret.get_secret_value() == "wecom-s3cret"  # type: ignore[union-attr]
    assert wecom.url == "ws://127.0.0.1:9/"  # type: ignore[union-attr]  # the default
    assert lark.app_secret.get_secret_value() == "lark-s3cret"  # type: ignore[union-attr]
    assert weixin.token.get_secret_value() == "t$ken"  # type: ignore[union-attr]
    for text in (repr(config), str(config), repr(bridge)):  # secrets never shown
        assert "s3cret" not in text and "t$ken" not in text


BROKEN = """\
agent = "nowhere.module:agent"
store = "postgres://db/x"
concurrency = 0
on_busy = "drop"
colour = "blue"

[debounce]
window = -1

[http]
listen = "localhost"

[[connectors]]
platform = "wecom"
bot_id = "bot-1"
secret = "${MISSING_SECRET}"

[[connectors]]
platform = "telegram"

[[connectors]]
platform = "lark"
app_id = "cli_1"
app_secret = "${file:no_such_file}"
scret = "typo"

[[connectors]]
platform = "wecom"
bot_id = "bot-1"
"""


def test_each_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig) as caught:
        load_config(write(tmp_path, BROKEN), {})
    problems = {p.path: p.message for p in caught.value.problems}
    assert set(problems) == {
        "connectors[0].secret",
        "connectors[2].app_secret",
        "concurrency",
        "on_busy",
        "colour",
        "debounce.window",
        "http.listen",
        "connectors[1]",
        "connectors[2].scret",
        "connectors[3].secret",
    }
    assert "MISSING_SECRET is not set" in problems["connectors[0].secret"]
    assert "no_such_file" in problems["connectors[2].app_secret"]
    assert "unknown key" in problems["colour"]
    assert "'weixin', 'wecom', 'wecom-webhook', 'lark'" in problems["connectors[1]"]
    assert problems["connectors[3].secret"] == "Field required"


def test_semantic_problems_come_once_the_shape_is_right(tmp_path: Path) -> None:
    toml = """\
    agent = "cfgbot:not_async"
    store = "postgres://db/x"

    [[connectors]]
    platform = "weixin"
    account = "wx"

    [[connectors]]
    platform = "weixin"
    account = "wx"
    """
    with pytest.raises(InvalidConfig) as caught:
        load_config(write(tmp_path, toml, agent_module="cfgbot_semantic"), {})
    problems = {p.path: p.message for p in caught.value.problems}
    assert set(problems) == {"agent", "store", "connectors[1]"}
    assert "not an async function" in problems["agent"]
    assert "unknown scheme" in problems["store"]
    assert "configured twice" in problems["connectors[1]"]


def test_one_wecom_bot_on_both_transports_is_told_what_to_do(tmp_path: Path) -> None:
    toml = """\
    agent = "cfgbot_twice:agent"

    [[connectors]]
    platform = "wecom"
    bot_id = "aib-1"
    secret = "s"

    [[connectors]]
    platform = "wecom-webhook"
    bot_id = "aib-1"
    token = "t"
    encoding_aes_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    """
    with pytest.raises(InvalidConfig) as caught:
        load_config(write(tmp_path, toml, agent_module="cfgbot_twice"), {})
    [problem] = caught.value.problems
    assert problem.path == "connectors[1]"
    assert problem.message.startswith("wecom:aib-1 is configured twice (also connectors[0]): ")
    assert "either over the long connection" in problem.message
    assert "give the other connector another bot's id" in problem.message


def test_an_agent_that_cannot_be_imported_is_named(tmp_path: Path) -> None:
    toml = """\
    agent = "cfgbot_missing_attr:nothing"

    [[connectors]]
    platform = "weixin"
    account = "wx"
    """
    with pytest.raises(InvalidConfig, match=r"agent: 'cfgbot_missing_attr' has no 'nothing'"):
        load_config(write(tmp_path, toml, agent_module="cfgbot_missing_attr"), {})


def test_not_toml_and_no_file_are_one_problem_each(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("agent = [unclosed")
    with pytest.raises(InvalidConfig, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(InvalidConfig, match="cannot read it"):
        load_config(tmp_path / "absent.toml")


def test_run_with_a_broken_config_reports_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BROKEN)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: 10 problem(s):" in err
    assert "  connectors[0].secret: the environment variable MISSING_SECRET is not set" in err
    assert main(["check", str(path)]) == 2


def test_a_malformed_webhook_key_is_reported_at_its_connector(tmp_path: Path) -> None:
    toml = """\
    agent = "cfgbot_webhook:agent"

    [[connectors]]
    platform = "wecom-webhook"
    bot_id = "hook"
    token = "t"
    encoding_aes_key = "too short"
    """
    config = load_config(write(tmp_path, toml, agent_module="cfgbot_webhook"), {})
    with pytest.raises(InvalidConfig, match=r"connectors\[0\]: .*") as caught:
        config.build_bridge(config.load_agent(), "cfg.toml")
    assert "too short" not in str(caught.value)  # a secret, even a wrong one, is never shown


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///chatbridge.db", "chatbridge.db"),
        ("sqlite:///data/bot.db", "data/bot.db"),
        ("sqlite:////var/lib/bot.db", "/var/lib/bot.db"),
        ("sqlite:bot.db", "bot.db"),
        ("sqlite:///with%20space.db", "with space.db"),
    ],
)
def test_sqlite_urls_name_their_file(url: str, path: str) -> None:
    store = store_from_url(url)
    assert isinstance(store, cb.SQLiteStore) and store.path == path


def test_memory_and_bad_store_urls() -> None:
    assert isinstance(store_from_url("memory://"), cb.MemoryStore)
    for url, why in [
        ("redis2://x", "unknown scheme"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///", "name the file"),
        ("memory://x", "nothing after"),
        ("chatbridge.db", "unknown scheme"),
    ]:
        with pytest.raises(cb.ConfigurationError, match=why):
            store_from_url(url)


@given(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1))
def test_any_sqlite_path_survives_its_url(path: str) -> None:
    store = store_from_url("sqlite:///" + quote(path))
    assert isinstance(store, cb.SQLiteStore) and store.path == os.path.expanduser(path)


@pytest.mark.parametrize("url", ["sqlite:///~/bot.db", "sqlite:~/bot.db", "sqlite:///~/data/j.db"])
def test_a_sqlite_path_under_the_home_directory_is_read_as_the_shell_reads_it(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``~`` at the start of a SQLite path is the home directory, as a shell reads it: the
    store opened a directory named "~" under the working directory (or the config file's),
    which `ls ~` never shows. Elsewhere in the path it is a name like any other."""
    monkeypatch.setenv("HOME", str(tmp_path))
    store = store_from_url(url)
    assert isinstance(store, cb.SQLiteStore)
    assert store.path == str(tmp_path / url.rsplit("~", 1)[1].lstrip("/"))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "data").mkdir()
    path = write(tmp_path / "cfg", SQLITE.format(store=f'store = "{url}"'))
    assert load_config(path, {"WECOM_SECRET": "s"}).store == url  # not the config file's
    store = store_from_url("sqlite:////data/~/bot.db")
    assert isinstance(store, cb.SQLiteStore) and store.path == "/data/~/bot.db"


def test_redis_urls_name_a_redis_store_without_showing_the_password() -> None:
    store = store_from_url("redis://:s3cret@127.0.0.1:6390/2?prefix=bots:&cluster=false")
    assert isinstance(store, cb.RedisStore)
    assert store.prefix == "bots:" and "s3cret" not in repr(store)
    assert "127.0.0.1:6390/2" in repr(store)
    tls = store_from_url("rediss://127.0.0.1:6391")
    assert isinstance(tls, cb.RedisStore) and tls.prefix == "chatbridge:"
    with pytest.raises(cb.ConfigurationError, match="cluster must be true or false"):
        store_from_url("redis://127.0.0.1?cluster=maybe")


@pytest.mark.parametrize(
    "url",
    [
        "reddis://:s3cret@127.0.0.1:6390/2",  # a misspelt scheme
        "redis+sentinel://user:s3cret@127.0.0.1/0",  # a scheme we do not read
        "sqlite://user:s3cret@127.0.0.1/x.db",  # a host where none belongs
    ],
)
def test_a_bad_store_url_is_reported_without_its_password(url: str) -> None:
    """The error is printed by run and check, and logged: the password stays out of it."""
    with pytest.raises(cb.ConfigurationError) as caught:
        store_from_url(url)
    assert "s3cret" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)  # still says which URL is meant


@pytest.mark.parametrize(
    "url",
    [
        "redis://[::1/0",
        "redis://:pw@127.0.0.1:abc/0",
        "sqlite://[x",
        "redis://127.0.0.1?prefix={x}",
    ],
)
def test_a_malformed_store_url_is_a_configuration_error(url: str) -> None:
    """Not a ValueError out of urllib: run and check report configuration errors only."""
    with pytest.raises(cb.ConfigurationError, match="store URL"):
        store_from_url(url)


MINIMAL_CONNECTOR = """
[[connectors]]
platform = "wecom"
bot_id = "bot-1"
secret = "s"
url = "ws://127.0.0.1:9/"
"""
VALUES_BASE = """\
agent = "cfgbot:agent"
store = "memory://"
{top}

[[connectors]]
platform = "{platform}"
{connector}
"""


@pytest.mark.parametrize(
    ("top", "platform", "connector", "key", "said"),
    [
        ("[http]\nlisten = '127.0.0.1:99999'", "wecom", "", "http.listen", "above 65535"),
        ("[debounce]\nwindow = nan", "wecom", "", "debounce.window", "finite number"),
        ("shutdown_grace = inf", "wecom", "", "shutdown_grace", "finite number"),
        ("[backoff]\nmultiplier = inf", "wecom", "", "backoff.multiplier", "finite number"),
        ("[backoff]\ninitial = 100\nmaximum = 1", "wecom", "", "backoff", "initial <= maximum"),
        ("", "wecom", "url = 'http://127.0.0.1:9/'", "connectors[0].url", "write wss://"),
        ("", "lark", "domain = 'feishu.cn'", "connectors[0].domain", "'feishu' or 'lark' or"),
        ("", "weixin", "base_url = '127.0.0.1:9'", "connectors[0].base_url", "write https://"),
    ],
)
def test_values_that_would_fail_only_once_running_are_problems_at_their_key(
    tmp_path: Path, top: str, platform: str, connector: str, key: str, said: str
) -> None:
    """Before, each passed validation and then failed at start (a traceback, an OverflowError
    binding the port) or at every connector start (a ValueError about the URL)."""
    credentials = {
        "wecom": "bot_id = 'b'\nsecret = '${S}'",
        "lark": "app_id = 'cli_1'\napp_secret = '${S}'",
        "weixin": "account = 'wx'\ntoken = '${S}'",
    }[platform]
    toml = VALUES_BASE.format(top=top, platform=platform, connector=f"{credentials}\n{connector}")
    with pytest.raises(InvalidConfig) as caught:
        load_config(write(tmp_path, toml), {"S": "secret-value"})
    [problem] = caught.value.problems
    assert problem.path == key
    assert said in problem.message


@pytest.mark.parametrize(
    ("code", "said"),
    [
        ("raise RuntimeError('no API key')\n", "raised RuntimeError: no API key ({file}, line 1)"),
        ("def agent(:\n", "raised SyntaxError: invalid syntax ({file}, line 1)"),
        # raised inside the library: the line of the bot's that called it
        (
            "import os\n\nKEY = os.environ['CFGBOT_NO_SUCH_VARIABLE']\n",
            "raised KeyError: 'CFGBOT_NO_SUCH_VARIABLE' ({file}, line 3)",
        ),
        (
            "import json\nSETTINGS = json.loads('{')\n",
            "raised JSONDecodeError: Expecting property name enclosed in double quotes: line 1 "
            "column 2 (char 1) ({file}, line 2)",
        ),
    ],
)
def test_an_agent_module_that_fails_as_it_is_imported_is_one_problem_saying_where(
    tmp_path: Path, code: str, said: str
) -> None:
    """It was a traceback out of ``run`` with exit code 1."""
    module = tmp_path / "cfgbot_broken_at_import.py"
    config = write(tmp_path, 'agent = "cfgbot_broken_at_import:agent"\n' + MINIMAL_CONNECTOR)
    module.write_text(code)
    with pytest.raises(InvalidConfig) as caught:
        load_config(config, {})
    [problem] = caught.value.problems
    assert problem.path == "agent"
    assert problem.message == f"importing 'cfgbot_broken_at_import' {said.format(file=module)}"


WEBHOOK = """
[[connectors]]
platform = "wecom-webhook"
bot_id = "{bot}"
token = "${{S}}"
encoding_aes_key = "${{S}}"
path = "{path}"
"""


@pytest.mark.parametrize(
    ("paths", "said"),
    [
        (["/"], "'/' would take /healthz, /metrics, /readyz from the endpoint"),
        (["/healthz"], "'/healthz' would take /healthz from the endpoint"),
        (["/wecom", "/wecom"], "'/wecom' is connectors[0]'s path too"),
        (["/wecom", "/wecom/"], "'/wecom/' is connectors[0]'s path too"),
        (["/wecom", "/wecom/b"], "'/wecom/b' nests with connectors[0]'s '/wecom'"),
        (["/wecom/b/", "/wecom"], "'/wecom' nests with connectors[0]'s '/wecom/b/'"),
    ],
)
def test_a_webhook_path_that_would_take_another_ones_requests_is_a_problem(
    tmp_path: Path, paths: list[str], said: str
) -> None:
    """The mount answers first: a probe of /healthz reached the webhook, which refused it."""
    webhooks = "".join(WEBHOOK.format(bot=f"bot-{i}", path=p) for i, p in enumerate(paths))
    toml = 'agent = "cfgbot:agent"\nstore = "memory://"\n[http]\nlisten = "127.0.0.1:0"\n'
    with pytest.raises(InvalidConfig) as caught:
        load_config(write(tmp_path, toml + webhooks), {"S": "k" * 43})
    [problem] = caught.value.problems
    assert problem.path == f"connectors[{len(paths) - 1}].path"
    assert problem.message.startswith(said)


def test_webhook_paths_apart_are_no_problem(tmp_path: Path) -> None:
    """Siblings and a path that only shares a prefix's letters are routed apart."""
    paths = ["/wecom/a", "/wecom/b", "/wecomb"]
    webhooks = "".join(WEBHOOK.format(bot=f"bot-{i}", path=p) for i, p in enumerate(paths))
    toml = 'agent = "cfgbot:agent"\nstore = "memory://"\n[http]\nlisten = "127.0.0.1:0"\n'
    config = load_config(write(tmp_path, toml + webhooks), {"S": "k" * 43})
    assert len(config.connectors) == 3


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("/dev/zero", "is not a regular file"),
        ("big", "is over 64 KiB"),
        ("fifo", "is not a regular file"),
    ],
)
def test_a_file_reference_reads_at_most_64_kib_of_a_regular_file(
    tmp_path: Path, name: str, said: str
) -> None:
    """``${file:/dev/zero}`` read forever at start, a FIFO without a writer blocked the open
    for good, and a log file by mistake was read whole."""
    (tmp_path / "big").write_bytes(b"x" * (64 * 1024 + 1))
    os.mkfifo(tmp_path / "fifo")
    toml = GOOD.replace("${file:lark_secret}", f"${{file:{name}}}")
    with pytest.raises(InvalidConfig) as caught:
        load_config(write(tmp_path, toml), {"WECOM_SECRET": "s"})
    [problem] = caught.value.problems
    assert problem.path == "connectors[1].app_secret"
    assert said in problem.message


def test_a_missing_variable_is_its_key_s_one_problem(tmp_path: Path) -> None:
    """A key whose ``${NAME}`` is not set was reported twice: the variable, then what the
    empty value failed (``http.listen``'s pattern, ``bot_id``'s length), which only misled."""
    text = """\
agent = "bot:agent"
store = "memory://"
[http]
listen = "${NO_SUCH_LISTEN}"
[[connectors]]
platform = "wecom"
bot_id = "${NO_SUCH_BOT}"
secret = "s"
"""
    with pytest.raises(InvalidConfig) as caught:
        load_config(write(tmp_path, text), {})
    assert [str(p) for p in caught.value.problems] == [
        "http.listen: the environment variable NO_SUCH_LISTEN is not set",
        "connectors[0].bot_id: the environment variable NO_SUCH_BOT is not set",
    ]


def test_a_value_not_in_its_form_says_the_form_not_a_regex(tmp_path: Path) -> None:
    """pydantic's own message quoted its pattern ('String should match pattern ...')."""
    toml = """
    agent = "cfgbot.agent"

    [http]
    listen = "8080"

    [[connectors]]
    platform = "wecom-webhook"
    bot_id = "b"
    token = "t"
    encoding_aes_key = "k"
    path = "wecom"
    """
    with pytest.raises(InvalidConfig) as caught:
        load_config(write(tmp_path, toml), {})
    said = {p.path: p.message for p in caught.value.problems}
    assert said["agent"].startswith("write module:function, as bot:agent")
    assert said["http.listen"].startswith("write host:port, as 127.0.0.1:8080")
    assert said["connectors[0].path"] == "write a path starting with /, as /wecom"
    assert not any("pattern" in message for message in said.values())


SQLITE = """\
agent = "cfgbot:agent"
{store}

[[connectors]]
platform = "wecom"
bot_id = "bot-1"
secret = "${{WECOM_SECRET}}"
"""


@pytest.mark.parametrize(
    ("store", "file"),
    [
        ("", "chatbridge.db"),  # the default, as `init` writes it
        ('store = "sqlite:///chatbridge.db"', "chatbridge.db"),
        ('store = "sqlite:///data/j.db"', "data/j.db"),
        ('store = "sqlite:data/j.db"', "data/j.db"),
    ],
)
def test_a_relative_sqlite_path_is_beside_the_config_file_from_any_working_directory(
    store: str, file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``${file:PATH}`` and the agent's module are: ``run mybot/chatbridge.toml`` (what
    docs/service.md says after ``init mybot``) kept its journal in the working directory, and
    a service started elsewhere (systemd's is /) found another one, or none it could write."""
    bot = tmp_path / "mybot"
    (bot / "data").mkdir(parents=True)
    path = write(bot, SQLITE.format(store=store))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(os.path.relpath(path), {"WECOM_SECRET": "s"})
    bridge = config.build_bridge(config.load_agent())
    assert isinstance(bridge.store, cb.SQLiteStore)
    assert Path(bridge.store.path) == bot / file
    opened = store_from_url(config.store)  # what `check` opens
    assert isinstance(opened, cb.SQLiteStore) and opened.path == bridge.store.path


@pytest.mark.parametrize("store", ["memory://", "sqlite:///:memory:", "sqlite:///{tmp}/j.db"])
def test_a_store_without_a_relative_path_is_as_written(store: str, tmp_path: Path) -> None:
    store = store.format(tmp=tmp_path)  # absolute: sqlite:////tmp/...
    path = write(tmp_path, SQLITE.format(store=f'store = "{store}"'))
    assert load_config(path, {"WECOM_SECRET": "s"}).store == store


def test_a_journal_left_in_the_working_directory_is_a_problem_not_a_fresh_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service that ran from another directory before relative paths followed the file has
    its journal (pending messages, cursors, WeChat tokens) there: starting on an empty one
    beside the file would lose them, so it is a problem that says where each is."""
    bot = tmp_path / "mybot"
    bot.mkdir()
    path = write(bot, SQLITE.format(store=""))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chatbridge.db").write_bytes(b"")
    with pytest.raises(InvalidConfig) as caught:
        load_config(path, {"WECOM_SECRET": "s"})
    [problem] = caught.value.problems
    assert problem.path == "store"
    assert str(tmp_path / "chatbridge.db") in problem.message
    assert str(bot / "chatbridge.db") in problem.message
    (bot / "chatbridge.db").write_bytes(b"")  # moved (or copied) beside the file: no problem
    store = store_from_url(load_config(path, {"WECOM_SECRET": "s"}).store)
    assert isinstance(store, cb.SQLiteStore) and Path(store.path) == bot / "chatbridge.db"


def test_a_relative_sqlite_path_through_a_linked_directory_leads_where_file_references_do(
    tmp_path: Path,
) -> None:
    """``..`` after a symlinked directory is the link target's parent, for the system and so
    for ``${file:../shared/secret}``: the store's path was made absolute by dropping ``..``
    against the link's own path, another directory (here one that does not exist)."""
    real = tmp_path / "real" / "bot"
    (tmp_path / "real" / "shared").mkdir(parents=True)
    (tmp_path / "real" / "shared" / "secret").write_text("s\n")
    real.mkdir()
    toml = SQLITE.format(store='store = "sqlite:///../shared/j.db"')
    write(real, toml.replace("${WECOM_SECRET}", "${file:../shared/secret}"))
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    config = load_config(link / "chatbridge.toml", {})
    secret = config.connectors[0].secret  # type: ignore[union-attr]
    assert secret.get_secret_value() == "s"  # read from real/shared/secret
    store = store_from_url(config.store)
    assert isinstance(store, cb.SQLiteStore)
    assert Path(store.path).resolve() == tmp_path / "real" / "shared" / "j.db"


def test_a_relative_file_uri_is_beside_the_config_file_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite ``file:`` URI with a relative path (``file:data/j.db?mode=rwc``) is a relative
    path in the file like any other: it was left the working directory's."""
    bot = tmp_path / "my bot"
    (bot / "data").mkdir(parents=True)
    uri = quote("file:data/j.db?mode=rwc", safe="/")  # its ? quoted: the store URL's is not its
    path = write(bot, SQLITE.format(store=f'store = "sqlite:///{uri}"'))
    monkeypatch.chdir(tmp_path)
    store = store_from_url(load_config(path, {"WECOM_SECRET": "s"}).store)
    assert isinstance(store, cb.SQLiteStore)
    assert store.path == f"file:{quote(str(bot / 'data' / 'j.db'))}?mode=rwc"
