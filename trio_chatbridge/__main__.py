"""The command line: ``python -m trio_chatbridge demo``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from functools import partial


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trio_chatbridge",
        description="Connect chat platforms to your bot or agent, on Trio.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)
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
    emulate.add_argument("platform", choices=["weixin", "wecom", "lark"])
    emulate.add_argument("--host", default="127.0.0.1")
    emulate.add_argument("--port", type=int, default=0, help="0 picks a free port")
    login = commands.add_parser(
        "weixin-login", help="log a WeChat bot in by QR code and keep its token in the store"
    )
    login.add_argument("--account", required=True, help="the account name the Connector uses")
    login.add_argument("--store", default="chatbridge.db", help="the SQLite store file")
    login.add_argument("--base-url", default=None, help="the QR login server (an emulator's)")
    return parser


def _emulate(platform: str, host: str, port: int) -> None:
    import trio

    from .testing._emulate import emulate

    def out(line: str) -> None:
        print(line, flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(partial(emulate, platform, host, port, out=out))


def _weixin_login(account: str, store_path: str, base_url: str | None) -> int:
    import trio

    from .platforms.weixin import ILinkClient, LoginError, login
    from .platforms.weixin._login import QR_BASE_URL
    from .stores import SQLiteStore

    async def run() -> None:
        async with SQLiteStore(store_path) as store:
            client = ILinkClient(None, base_url=base_url or QR_BASE_URL)
            try:
                result = await login(store, account, client=client)
            finally:
                await client.aclose()
        print(f"logged in: bot {result.bot_id or '(already bound)'}; token stored in {store_path}")

    try:
        trio.run(run)
    except LoginError as exc:
        print(f"login failed: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        return _weixin_login(args.account, args.store, args.base_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
