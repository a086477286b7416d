"""The command line: ``python -m trio_chatbridge`` (or the ``trio-chatbridge`` script)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .stores import Store


def _prog() -> str:
    """How the user called us: ``trio-chatbridge`` (the script) or ``python -m ...``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m trio_chatbridge" if name in ("", "__main__.py", "-c") else name


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Connect chat platforms to your bot or agent, on Trio.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run the bridge a configuration file describes, until SIGINT or SIGTERM",
        description="Exit codes: 0 stopped gracefully, 2 configuration problems, 3 every "
        "connector failed for good, 128+N stopped at once by a second signal N, 1 otherwise.",
    )
    run.add_argument("config", help="the TOML configuration file")
    run.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    check = commands.add_parser(
        "check",
        help="validate a configuration, then try each connector's credentials once",
    )
    check.add_argument("config", help="the TOML configuration file")
    check.add_argument(
        "--timeout", type=float, default=15.0, help="seconds each connector gets (default 15)"
    )
    init = commands.add_parser(
        "init", help="write a configuration, an agent and a test of it into a directory"
    )
    init.add_argument("directory", help="where to write them (created if missing)")
    demo = commands.add_parser(
        "demo", help="play a scripted conversation through the bridge and print a transcript"
    )
    demo.add_argument(
        "--loopback",
        action="store_true",
        help="serve the platform emulators on real loopback sockets instead of in memory",
    )
    emulate = commands.add_parser(
        "emulate",
        help="run a platform emulator on loopback; prints one JSON line with its URLs first",
    )
    emulate.add_argument(
        "platform", choices=["weixin", "wecom", "lark"], help="the platform to emulate"
    )
    emulate.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)"
    )
    emulate.add_argument(
        "--port", type=int, default=0, help="the platform's port (0 picks a free one)"
    )
    login = commands.add_parser(
        "weixin-login", help="log a WeChat bot in by QR code and keep its token in the store"
    )
    login.add_argument("--account", required=True, help="the account name the Connector uses")
    where = login.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        default=None,
        help="the store, as the configuration's store URL (sqlite:///chatbridge.db, the default;"
        " redis://...); a bare path without a scheme is a SQLite file; a relative path is the"
        " working directory's",
    )
    where.add_argument(
        "--config",
        default=None,
        help="the configuration file whose store to use, as 'run' opens it (a relative SQLite"
        " path is the file's directory's)",
    )
    login.add_argument("--base-url", default=None, help="the QR login server (an emulator's)")
    return parser


def _emulate(platform: str, host: str, port: int) -> None:
    import trio

    from .testing._emulate import emulate

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        trio.run(partial(emulate, platform, host, port, out=out))
    except* KeyboardInterrupt:  # Ctrl-C, the way to stop it; Trio raises it in a group
        pass


def _weixin_login(
    account: str, store_url: str | None, config: str | None, base_url: str | None
) -> int:
    import trio

    from ._config import DEFAULT_STORE, store_url_of
    from ._errors import ConfigurationError
    from .platforms.weixin import ILinkClient, LoginError, login
    from .platforms.weixin._login import QR_BASE_URL

    try:
        url = store_url_of(config) if config is not None else store_url or DEFAULT_STORE
        store = _login_store(url)
    except ConfigurationError as exc:
        print(f"weixin-login: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        async with store:
            client = ILinkClient(None, base_url=base_url or QR_BASE_URL)
            try:
                result = await login(store, account, client=client)
            finally:
                await client.aclose()
        print(f"logged in: bot {result.bot_id or '(already bound)'}; token stored in {store!r}")

    try:
        trio.run(run)
    except LoginError as exc:
        print(f"login failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _login_store(value: str) -> Store:
    """``--store``: a store URL, read as the configuration's ``store`` is; a bare path (no
    ``scheme:``) is a SQLite file, as the option once took, so ``--store chatbridge.db`` and
    ``--store sqlite:///chatbridge.db`` name one store."""
    from .stores import SQLiteStore, store_from_url
    from .stores._url import SCHEMES

    if "://" in value or value.partition(":")[0] in SCHEMES:
        return store_from_url(value)
    return SQLiteStore(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("run", "check", "init"):
        from . import _cli

        if args.command == "run":
            return _cli.run_command(args.config, log_json=args.log_json, verbose=args.verbose)
        if args.command == "check":
            return _cli.check_command(args.config, timeout=args.timeout)
        return _cli.init_command(args.directory)
    quiet = (
        logging.CRITICAL if args.command == "demo" else logging.WARNING
    )  # the transcript says it
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else quiet,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "demo":
        from ._demo import main as demo

        demo(loopback=args.loopback)
    elif args.command == "emulate":
        _emulate(args.platform, args.host, args.port)
    elif args.command == "weixin-login":
        return _weixin_login(args.account, args.store, args.config, args.base_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
