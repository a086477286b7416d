"""The service commands of the command line: ``run``, ``check`` and ``init``."""

from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path
from typing import Final

import trio

from ._check import CHECK_TIMEOUT, check_all
from ._config import Config, InvalidConfig, load_config
from ._errors import ChatBridgeError, ConfigurationError, find_error
from ._logs import configure_logging
from ._redact import guard
from ._service import ExitCode, mounts, run_service
from ._supervise import describe
from .stores import store_from_url

log = guard(logging.getLogger("trio_chatbridge.service"))  # redacted before any bridge runs


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except InvalidConfig as exc:
        print(exc, file=sys.stderr)
        return None


def run_command(path: str, *, log_json: bool = False, verbose: bool = False) -> int:
    """``run CONFIG``: serve until a signal; returns the exit code (see ``ExitCode``)."""
    config = _load(path)
    if config is None:
        return ExitCode.CONFIG
    configure_logging(
        "DEBUG" if verbose else config.log.level, json_lines=log_json or config.log.json_lines
    )
    try:
        bridge = config.build_bridge(config.load_agent(), path)
    except InvalidConfig as exc:
        print(exc, file=sys.stderr)
        return ExitCode.CONFIG
    for key in config.inline_secrets:
        log.warning("%s: %s", path, _inline(key))
    _raise_open_files_limit()
    log.info(
        "starting %s with %d connector(s): %s",
        path,
        len(bridge.connectors),
        ", ".join(c.name for c in bridge.connectors),
    )
    service = partial(
        run_service,
        bridge,
        http=config.http,
        mounted=mounts(config, bridge),
        exit_when_all_failed=config.exit_when_all_failed,
    )
    try:
        code = trio.run(service)
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 128 + 2
    except Exception as exc:
        error = _ours(exc)
        if error is None:
            log.critical("stopped by an unexpected error: %s", describe(exc), exc_info=exc)
            return ExitCode.ERROR
        # Ours say what to do (a store that cannot be opened, a port in use): one line; the
        # traceback is for -v.
        log.critical("stopped: %s", describe(error))
        log.debug("the traceback", exc_info=exc)
        return ExitCode.CONFIG if isinstance(error, ConfigurationError) else ExitCode.ERROR
    except BaseExceptionGroup as group:  # SystemExit or KeyboardInterrupt out of a task
        return _exit_code_of(group)
    log.info("stopped (exit code %d)", code)
    return code


def _raise_open_files_limit() -> None:
    """Raise the process's soft limit on open files to its hard limit, as Go programs do.

    Every connection is a file: each account's client (1,000 WeChat accounts hold 1,000), the
    store's, and each connection to the HTTP endpoint (a webhook exposed to the internet may
    see thousands at once; each is closed after 5 s idle). The usual soft limit, 1,024 (a
    systemd service's), let those exhaust it, and then every new connection of the process
    failed, the connectors' too. The hard limit is the operator's ceiling (``LimitNOFILE``,
    ``ulimit -Hn``), never passed. Where there is none (not Unix) or it is infinite, nothing
    changes."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:  # a sandbox refusing it: the soft limit stays
        log.warning("open files limit stays at %d (raising it to %d failed: %s)", soft, hard, exc)
    else:
        log.info("open files limit raised from %d to %d (the hard limit)", soft, hard)


def _exit_code_of(group: BaseExceptionGroup[BaseException]) -> int:
    """The exit code for a SystemExit or KeyboardInterrupt raised in one of the bridge's tasks
    (an agent's, in life): the process's own exceptions, which stop the bridge (its store
    closed, the unanswered messages pending in the journal for the next start). Trio hands
    them out of its nurseries in a group, which Python would print as a traceback: one line
    instead (the traceback in the debug log), and the code Python gives each: SystemExit's
    own (None 0, an int itself, anything else 1), 130 for KeyboardInterrupt as for Ctrl-C."""
    leaving = find_error(group, SystemExit)
    stop = leaving if leaving is not None else find_error(group, KeyboardInterrupt)
    if stop is None:  # a GeneratorExit or a BaseException of the user's own
        log.critical("stopped by an unexpected error: %s", describe(group), exc_info=group)
        return ExitCode.ERROR
    log.critical(
        "stopped: %s raised in the bridge (by an agent?); unanswered messages stay pending "
        "for the next start",
        describe(stop),
    )
    log.debug("the traceback", exc_info=group)
    if leaving is None:
        return 128 + 2
    code = leaving.code
    return 0 if code is None else code if isinstance(code, int) else ExitCode.ERROR


def _inline(key: str) -> str:
    """What to say of a credential written in the configuration file itself."""
    return (
        f"{key} is written in the file: whoever reads the file (a repository, an image) has "
        "it; take it from the environment (${NAME}) or a secret file (${file:PATH})"
    )


def _ours(exc: BaseException) -> ChatBridgeError | None:
    """``exc`` if it is one of our errors, or the one error inside nested exception groups of
    one error each (what Trio's nurseries make of an error raised in a task); else None."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, ChatBridgeError) else None


def check_command(path: str, *, timeout: float = CHECK_TIMEOUT) -> int:
    """``check CONFIG``: validate, then try each connector once; 0 only if all came up."""
    config = _load(path)
    if config is None:
        return ExitCode.CONFIG
    print(f"{path}: configuration valid")
    for key in config.inline_secrets:
        print(f"note: {_inline(key)}")
    try:
        bridge = config.build_bridge(config.load_agent(), path)
    except InvalidConfig as exc:
        print(exc, file=sys.stderr)
        return ExitCode.CONFIG
    try:
        results = trio.run(check_all, bridge.connectors, store_from_url(config.store), timeout)
    except Exception as exc:
        error = _ours(exc)
        if error is None:
            raise
        print(f"store: {describe(error)}", file=sys.stderr)  # the only error check_all raises
        return ExitCode.ERROR
    width = max(len(r.name) for r in results)
    for result in results:
        print(f"{'ok' if result.ok else 'FAILED':<6} {result.name:<{width}}  {result.detail}")
    return ExitCode.OK if all(r.ok for r in results) else ExitCode.ERROR


CONFIG_FILE: Final = "chatbridge.toml"
AGENT_FILE: Final = "bot.py"
TEST_FILE: Final = "test_bot.py"

CONFIG_TEMPLATE: Final = """\
# trio-chatbridge configuration: run it with
#     python -m trio_chatbridge run {config}
# Values may come from the environment (${{NAME}}, ${{NAME:-default}}) or a file
# (${{file:/run/secrets/name}}). Every key: see docs/service.md.

agent = "bot:agent"               # module:function, found next to this file
store = "sqlite:///chatbridge.db" # next to this file; or "memory://"
shutdown_grace = 10.0             # seconds running agents get at shutdown

[debounce]
window = 3.0                      # seconds of quiet that end a batch
max_delay = 20.0

[http]
listen = "127.0.0.1:8080"         # /healthz, /readyz, /metrics

[[connectors]]
platform = "wecom"
bot_id = "${{WECOM_BOT_ID}}"
secret = "${{WECOM_SECRET}}"
# Against the emulator ('python -m trio_chatbridge emulate wecom' prints these values):
url = "${{WECOM_URL:-wss://openws.work.weixin.qq.com}}"
"""

AGENT_TEMPLATE: Final = '''\
"""The bot: each batch is what one chat said during one quiet window, oldest first."""

import trio_chatbridge as cb


async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send("you said: " + " / ".join(m.text for m in batch.messages))
'''

TEST_TEMPLATE: Final = '''\
"""Tests of the bot, against the WeCom emulator in memory, on a virtual clock (no waiting).

Run them with: python -m pytest {test}
"""

import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge.testing import WeComEmulator, running_bridge

from bot import agent


def test_a_burst_is_answered_once_after_the_quiet_window() -> None:
    async def main() -> str:
        async with trio.open_nursery() as nursery:
            emulator = WeComEmulator()
            await nursery.start(emulator.run)
            bridge = cb.Bridge(
                [emulator.connector()],
                agent,
                store=cb.MemoryStore(),
                debounce=cb.Debounce(window=3.0),
            )
            async with running_bridge(bridge):
                emulator.user_says("alice", "hello")
                latest = emulator.user_says("alice", "are you there?")
                sent = await emulator.next_sent()
                while sent.req_id != latest:  # the earlier callback is closed first, empty
                    sent = await emulator.next_sent()
                answered_at = trio.current_time()
            nursery.cancel_scope.cancel()
        assert answered_at >= 3.0  # virtual seconds: the quiet window passed, instantly
        return sent.text

    text = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert text == "you said: hello / are you there?"
'''


def init_command(directory: str) -> int:
    """``init DIR``: write a configuration, an agent and its test; never overwrites a file."""
    target = Path(directory)
    files = {
        CONFIG_FILE: CONFIG_TEMPLATE.format(config=target / CONFIG_FILE),
        AGENT_FILE: AGENT_TEMPLATE,
        TEST_FILE: TEST_TEMPLATE.format(test=target / TEST_FILE),
    }
    existing = [name for name in files if (target / name).exists()]
    if existing:
        print(f"{target}: not overwriting {', '.join(existing)}", file=sys.stderr)
        return ExitCode.ERROR
    target.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (target / name).write_text(text, encoding="utf-8")
    print(
        f"wrote {', '.join(str(target / name) for name in files)}\n"
        f"test the bot:  python -m pytest {target / TEST_FILE}   (pip install pytest)\n"
        f"run it:        python -m trio_chatbridge run {target / CONFIG_FILE}"
    )
    return ExitCode.OK
