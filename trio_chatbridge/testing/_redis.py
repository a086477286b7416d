"""Throwaway Redis servers for tests: a single node, or a three-node cluster, on loopback.

Each listens on a free loopback port, keeps nothing on disk (unless asked to keep an
append-only file), and is killed on exit. They need
``redis-server`` and ``redis-cli`` on the PATH (``apt-get install redis-server redis-tools``).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final, final

import attrs

from .._errors import ConfigurationError

START_TIMEOUT: Final = 10.0  # seconds for a server or the cluster to come up


def have_redis() -> bool:
    """Whether ``redis-server`` and ``redis-cli`` are installed."""
    return bool(shutil.which("redis-server") and shutil.which("redis-cli"))


def _free_port() -> int:
    """A loopback port that is free, and whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port >= 55000:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@final
@attrs.define
class RedisServer:
    """One redis-server process on loopback, as :func:`redis_server` starts it."""

    port: int
    process: subprocess.Popen[bytes]
    command: list[str] = attrs.Factory(list)
    """The command line that started it (:meth:`restart` runs it again)."""

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>``."""
        return f"redis://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        """Run a redis-cli command against this server; its output."""
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            timeout=START_TIMEOUT,
            check=True,
        )
        return done.stdout.decode()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        self.process.send_signal(signal.SIGCONT)

    def restart(self, *, empty: bool = False) -> None:
        """Kill the server (SIGKILL: its connections drop) and start it again on the same
        port. Without persistence (the default) it comes back empty: every key is lost, as
        after a crash of a Redis without persistence; a ``persistent`` one comes back with
        every write it answered (``appendfsync always``), unless ``empty`` (its files are
        deleted first, as after losing its disk). Blocks while it starts (call it through
        ``trio.to_thread.run_sync`` from a Trio task)."""
        _stop([self])
        if empty:
            directory = Path(self.command[self.command.index("--dir") + 1])
            shutil.rmtree(directory / "appendonlydir", ignore_errors=True)
            (directory / "dump.rdb").unlink(missing_ok=True)
        self.process = _popen(self.command)
        _wait(lambda: self.cli("ping").strip() == "PONG")


def _start(directory: Path, *options: str) -> RedisServer:
    if not have_redis():
        raise ConfigurationError(
            "redis-server and redis-cli are needed (apt-get install redis-server redis-tools)"
        )
    port = _free_port()
    command = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
        *options,
    ]
    server = RedisServer(port, _popen(command), command)
    try:
        _wait(lambda: server.cli("ping").strip() == "PONG")
    except BaseException:
        _stop([server])
        raise
    return server


def _popen(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if ready():
                return
        except subprocess.CalledProcessError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("redis did not come up in time")
        time.sleep(0.05)


def _stop(servers: list[RedisServer]) -> None:
    for server in servers:
        server.process.send_signal(signal.SIGCONT)
        server.process.kill()
        server.process.wait(timeout=START_TIMEOUT)


@contextmanager
def redis_server(
    directory: Path, *, persistent: bool = False, options: Sequence[str] = ()
) -> Iterator[RedisServer]:
    """A single Redis node working in ``directory``, killed on exit. ``persistent``: it
    writes an append-only file there, synced at each write, so that a :meth:`restart
    <RedisServer.restart>` loses nothing it answered. ``options`` go on redis-server's
    command line (a ``--tls-port`` and its certificates, say); its plain port stays open."""
    if persistent:
        options = ("--appendonly", "yes", "--appendfsync", "always", *options)
    server = _start(directory, *options)
    try:
        yield server
    finally:
        _stop([server])


@contextmanager
def redis_cluster(directory: Path, nodes: int = 3) -> Iterator[list[RedisServer]]:
    """``nodes`` cluster nodes joined with ``redis-cli --cluster create``, killed on exit."""
    started: list[RedisServer] = []
    try:
        for i in range(nodes):
            started.append(
                _start(
                    directory,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(directory / f"nodes-{i}.conf"),
                )
            )
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in started),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=START_TIMEOUT,
            check=True,
        )
        _wait(lambda: all("cluster_state:ok" in node.cli("cluster", "info") for node in started))
        yield started
    finally:
        _stop(started)
