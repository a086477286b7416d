"""Redis servers the tests start for themselves: a single node and a three-node cluster.

Each listens on a free loopback port, keeps nothing on disk, and is killed when the test
session ends. Without ``redis-server`` the Redis tests are skipped, except in CI (``CI=true``),
where a missing server fails the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

START_TIMEOUT = 10.0  # seconds for a server or the cluster to come up
CLUSTER_NODES = 3


def require_redis() -> None:
    """Skip the calling test without redis-server (fail in CI)."""
    if shutil.which("redis-server") and shutil.which("redis-cli"):
        return
    message = "redis-server and redis-cli are needed (apt-get install redis-server redis-tools)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
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


@attrs.define
class RedisServer:
    """One redis-server process on loopback."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
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
        self.process.send_signal(signal.SIGCONT)


def _start(directory: Path, *options: str) -> RedisServer:
    port = free_port()
    process = subprocess.Popen(
        [
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
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, process)
    _wait(lambda: server.cli("ping").strip() == "PONG")
    return server


def _wait(ready: object) -> None:
    assert callable(ready)
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
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A single Redis node, killed on exit."""
    require_redis()
    server = _start(directory)
    try:
        yield server
    finally:
        _stop([server])


@contextmanager
def redis_cluster(directory: Path) -> Iterator[list[RedisServer]]:
    """Three cluster nodes joined with ``redis-cli --cluster create``, killed on exit."""
    require_redis()
    nodes: list[RedisServer] = []
    try:
        for i in range(CLUSTER_NODES):
            nodes.append(
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
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=START_TIMEOUT,
            check=True,
        )
        _wait(lambda: all("cluster_state:ok" in node.cli("cluster", "info") for node in nodes))
        yield nodes
    finally:
        _stop(nodes)
