"""Each platform's official client, driven against our loopback emulators as a bot uses it.

    python -m benchmarks.official_clients --node-modules DIR --lark-python PYTHON

``DIR`` is a ``node_modules`` with ``@wecom/aibot-node-sdk`` and
``@tencent-weixin/openclaw-weixin`` (``npm install`` them in any directory); ``PYTHON`` a
Python with ``lark-oapi``. Neither is a dependency of this project: a platform whose client is
missing is skipped and says so. The bots are in ``benchmarks/official/``; each answers with
the SDK's own call for every feature, and prints one JSON line per call. This script makes the
users speak through each emulator's admin API (over HTTP, as a bot in another language would),
then checks both what the client reported and what the emulator recorded. It prints one line
per check and exits 1 if any failed. ``tests/test_official_clients.py`` runs it when the
clients are there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import trio

from trio_chatbridge.testing import (
    Activity,
    LarkEmulator,
    Record,
    WeComEmulator,
    WeixinEmulator,
)

HERE: Final = Path(__file__).parent / "official"
STEP_TIMEOUT: Final = 30.0  # seconds, real time: these are real processes on loopback


@attrs.frozen
class Check:
    platform: str
    name: str
    ok: bool
    detail: str = ""


@attrs.define
class Client:
    """A running client process: the JSON lines it printed, waited on by step name."""

    process: trio.Process
    lines: list[dict[str, Any]] = attrs.Factory(list)
    _changed: trio.Event = attrs.Factory(trio.Event)

    async def read(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        async for chunk in self.process.stdout:
            pending += chunk
            *whole, pending = pending.split(b"\n")
            for line in whole:
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    continue  # a log line of the SDK's
            self._changed.set()
            self._changed = trio.Event()

    async def step(self, name: str) -> dict[str, Any]:
        """The first line reporting step ``name`` (waits up to STEP_TIMEOUT)."""
        with trio.fail_after(STEP_TIMEOUT):
            while True:
                for line in self.lines:
                    if line.get("step") == name:
                        return line
                await self._changed.wait()


class Run:
    """The checks of one platform."""

    def __init__(self, platform: str, activity: list[Activity]) -> None:
        self.platform = platform
        self.activity = activity
        self.checks: list[Check] = []

    def check(self, name: str, ok: bool, detail: object = "") -> None:
        self.checks.append(Check(self.platform, name, ok, "" if ok else str(detail)[:200]))

    async def steps(self, client: Client, *names: str) -> None:
        """Each of ``names`` reported ok by the client."""
        for name in names:
            try:
                line = await client.step(name)
            except trio.TooSlowError:
                self.check(f"client: {name}", False, "never reported")
                continue
            self.check(f"client: {name}", bool(line.get("ok")), line.get("detail"))

    def recorded(self, name: str, match: Callable[[Activity], bool]) -> None:
        """The emulator recorded an entry that ``match`` accepts."""
        found = [a for a in self.activity if match(a)]
        self.check(f"emulator: {name}", bool(found), [a.kind for a in self.activity])


@asynccontextmanager
async def client(cmd: list[str], cwd: Path, env: Mapping[str, str]) -> AsyncIterator[Client]:
    process = await trio.lowlevel.open_process(
        cmd, cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE
    )
    running = Client(process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(running.read)
        try:
            yield running
        finally:
            process.kill()
            await process.wait()
            nursery.cancel_scope.cancel()


def kind_via(kind: str, via: str) -> Callable[[Activity], bool]:
    return lambda a: (a.kind, a.via) == (kind, via)


async def soon(activity: Record[Activity], match: Callable[[Activity], bool]) -> None:
    """Wait (up to STEP_TIMEOUT) until ``activity`` holds an entry ``match`` accepts."""
    with trio.move_on_after(STEP_TIMEOUT):
        while not any(match(a) for a in activity):
            await activity.next()


async def admin(http: httpx.AsyncClient, url: str, verb: str, body: Any) -> Any:
    answer = await http.post(f"{url}/{verb}", json=body)
    answer.raise_for_status()
    return answer.json()


LOOPBACK_ENV: Final = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


async def lark_checks(python: str) -> list[Check]:
    emu = LarkEmulator()
    run = Run("lark", emu.activity)
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
        await nursery.start(emu.serve)
        info = emu.describe()
        cmd = [python, str(HERE / "lark_bot.py"), json.dumps(info)]
        async with client(cmd, HERE, LOOPBACK_ENV) as bot:
            await run.steps(bot, "started")
            said = {"user": "ou_ann", "text": "everything"}  # queued until the bot connects
            await admin(http, info["admin_url"], "messages", said)
            await run.steps(
                bot,
                "reply_text",
                "edit_text",
                "reply_post",
                "reply_card",
                "patch_card",
                "get_message",
                "get_shows_patch",
                "upload_image",
                "reply_image",
                "upload_file",
                "reply_file",
                "send_first",
                "done",
            )
            action = {
                "schema": "2.0",
                "header": {"event_id": "ev-card-1", "event_type": "card.action.trigger"},
                "event": {"operator": {"open_id": "ou_ann"}, "action": {"value": {"ok": 1}}},
            }
            await admin(http, info["admin_url"], "events", {"event": action})
            await run.steps(bot, "card_action")
            await soon(emu.activity, lambda a: a.kind == "card_answer")
        nursery.cancel_scope.cancel()
    run.check("connected over the long connection", emu.connections > 0)
    for kind, via in [("text", "reply"), ("post", "reply"), ("card", "reply"), ("card", "patch")]:
        run.recorded(f"{kind} by {via}", kind_via(kind, via))
    run.recorded("text edited", lambda a: (a.kind, a.via) == ("text", "edit"))
    run.recorded("image with its upload", lambda a: a.kind == "image" and a.media is not None)
    run.recorded("file with its upload", lambda a: a.kind == "file" and a.media is not None)
    run.recorded("sent first", lambda a: (a.kind, a.via, a.text) == ("text", "send", "sent first"))
    run.recorded(
        "card action answer",
        lambda a: a.kind == "card_answer" and a.detail.get("toast", {}).get("content") == "saved",
    )
    return run.checks


async def wecom_checks(node_modules: Path) -> list[Check]:
    emu = WeComEmulator()
    run = Run("wecom", emu.activity)
    env = {"NODE_PATH": str(node_modules)}
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
        await nursery.start(emu.serve)
        info = emu.describe()
        url = info["admin_url"]
        cmd = ["node", str(HERE / "wecom_bot.cjs"), json.dumps(info)]
        async with client(cmd, HERE, env) as bot:
            await run.steps(bot, "authenticated")
            for text, steps in [
                ("stream", ["stream_frame", "stream_finish"]),
                ("card", ["reply_card"]),
                ("streamcard", ["stream_with_card"]),
                ("media", ["upload_image", "reply_media"]),
                ("send", ["send_markdown", "send_card", "upload_file", "send_media"]),
            ]:
                await admin(http, url, "messages", {"user": "ann", "text": text})
                await run.steps(bot, *steps, "done:" + text)
            await admin(http, url, "enter", {"user": "ann"})
            await run.steps(bot, "welcome_card")
            click = {
                "from": {"userid": "ann"},
                "event": {
                    "eventtype": "template_card_event",
                    "template_card_event": {"event_key": "ok", "task_id": "task-1"},
                },
            }
            await admin(http, url, "events", {"event": click})
            await run.steps(bot, "update_card")
        nursery.cancel_scope.cancel()
    run.recorded("stream", lambda a: (a.kind, a.text) == ("stream", "hello world"))
    run.recorded("card reply", lambda a: (a.kind, a.via) == ("card", "reply"))
    run.recorded("stream with card", lambda a: a.kind == "stream" and a.card is not None)
    run.recorded(
        "image reply, its upload in chunks",
        lambda a: a.kind == "image" and a.media is not None and a.media.size > 512 * 1024,
    )
    run.recorded("proactive markdown", lambda a: (a.kind, a.via) == ("markdown", "proactive"))
    run.recorded("proactive card", lambda a: (a.kind, a.via) == ("card", "proactive"))
    run.recorded("proactive file", lambda a: (a.kind, a.via) == ("file", "proactive"))
    run.recorded("card welcome", lambda a: (a.kind, a.via) == ("card", "welcome"))
    run.recorded("card update", lambda a: a.kind == "card_update")
    run.check("nothing left in flight", emu.in_flight("ann") == 0, emu.in_flight("ann"))
    return run.checks


async def weixin_checks(node_modules: Path) -> list[Check]:
    emu = WeixinEmulator(hold=2.0)
    run = Run("weixin", emu.activity)
    with tempfile.TemporaryDirectory() as home:  # the plugin keeps state under $HOME
        env = {"OFFICIAL_NODE_MODULES": str(node_modules), "HOME": home}
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
            await nursery.start(emu.serve)
            info = emu.describe()
            stub = str(HERE / "openclaw_stub.mjs")
            cmd = ["node", "--import", stub, str(HERE / "weixin_bot.mjs"), json.dumps(info)]
            async with client(cmd, HERE, env) as bot:
                await run.steps(bot, "notifystart")
                await admin(
                    http, info["admin_url"], "messages", {"user": "wx-ann", "text": "media"}
                )
                await run.steps(
                    bot,
                    "getconfig",
                    "typing",
                    "send_text",
                    "upload_image",
                    "send_image",
                    "upload_file",
                    "send_file",
                    "typing_cancel",
                    "done:media",
                )
                await admin(http, info["admin_url"], "messages", {"user": "wx-ann", "text": "stop"})
                await run.steps(bot, "done:stop", "notifystop")
            nursery.cancel_scope.cancel()
    run.recorded(
        "text with its context token", lambda a: a.kind == "text" and a.detail["context_token"]
    )
    run.recorded("image with its upload", lambda a: a.kind == "image" and a.media is not None)
    run.recorded("file with its upload", lambda a: a.kind == "file" and a.media is not None)
    run.recorded("typing on", lambda a: a.kind == "typing" and a.detail == {"status": 1})
    run.recorded("typing off", lambda a: a.kind == "typing" and a.detail == {"status": 2})
    run.recorded("notify start", lambda a: (a.kind, a.via) == ("notify", "notifystart"))
    run.recorded("notify stop", lambda a: (a.kind, a.via) == ("notify", "notifystop"))
    return run.checks


def missing_node(node_modules: Path | None, package: str) -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if node_modules is None or not (node_modules / package / "package.json").exists():
        return f"{package} is not in --node-modules"
    return None


def lark_missing(python: str | None) -> str | None:
    if python is None:
        return "no --lark-python given"
    probe = subprocess.run(
        [python, "-c", "import lark_oapi"], capture_output=True, check=False, timeout=60
    )
    return None if probe.returncode == 0 else f"{python} has no lark-oapi"


async def all_checks(node_modules: Path | None, lark_python: str | None) -> list[Check]:
    checks: list[Check] = []
    missing = lark_missing(lark_python)
    if missing is None and lark_python is not None:
        checks += await lark_checks(lark_python)
    else:
        checks.append(Check("lark", f"skipped: {missing}", True))
    for platform, package, run in [
        ("wecom", "@wecom/aibot-node-sdk", wecom_checks),
        ("weixin", "@tencent-weixin/openclaw-weixin", weixin_checks),
    ]:
        missing = missing_node(node_modules, package)
        if missing is None and node_modules is not None:
            checks += await run(node_modules)
        else:
            checks.append(Check(platform, f"skipped: {missing}", True))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--node-modules", type=Path, default=os.environ.get("OFFICIAL_NODE_MODULES")
    )
    parser.add_argument("--lark-python", default=os.environ.get("OFFICIAL_LARK_PYTHON"))
    args = parser.parse_args(argv)
    checks = trio.run(all_checks, args.node_modules, args.lark_python)
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        print(
            f"{mark} {check.platform:7} {check.name}"
            + (f": {check.detail}" if check.detail else "")
        )
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
