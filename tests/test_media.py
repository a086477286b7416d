"""Media downloads: an allowed name must also resolve to a public address, and the request
goes to the address that was checked."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
import trio

import trio_chatbridge as cb
from trio_chatbridge._media import fetch
from trio_chatbridge.testing import serve_http


class Resolver(trio.abc.HostnameResolver):
    """Answers each lookup with the next of ``answers`` (the last one from then on), as a
    DNS server rebinding a name would; notes every name asked."""

    def __init__(self, *answers: str) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def getaddrinfo(  # type: ignore[override]
        self, host: bytes | None, port: bytes | str | int | None, *args: Any, **kwargs: Any
    ) -> list[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[str, int]]]:
        assert host is not None and port is not None
        self.asked.append(host.decode() if isinstance(host, bytes) else host)
        address = self.answers[min(len(self.asked), len(self.answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]

    async def getnameinfo(self, sockaddr: object, flags: int) -> tuple[str, str]:
        raise NotImplementedError


async def media_server(nursery: trio.Nursery, hosts: list[str]) -> int:
    """A loopback media server answering b"media"; notes each request's Host header."""

    async def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.headers["host"])
        return httpx.Response(200, content=b"media")

    base: str = await nursery.start(serve_http, handler)
    return httpx.URL(base).port or 0


async def test_an_allowed_name_that_resolves_to_a_private_address_is_refused() -> None:
    trio.socket.set_custom_hostname_resolver(Resolver("127.0.0.1"))
    hosts: list[str] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
            port = await media_server(nursery, hosts)
            with pytest.raises(cb.MediaError, match=r"resolves to 127\.0\.0\.1, not a public"):
                await fetch(http, f"http://media.test:{port}/a", cb.MediaPolicy(("media.test",)))
            nursery.cancel_scope.cancel()
    assert hosts == []  # nothing was asked of it


async def test_the_request_goes_to_the_address_that_was_checked() -> None:
    """The name is looked up once: a second answer (127.0.0.2, where nothing listens) is
    never asked for, and the server still sees the name in the Host header."""
    resolver = Resolver("127.0.0.1", "127.0.0.2")
    trio.socket.set_custom_hostname_resolver(resolver)
    hosts: list[str] = []
    policy = cb.MediaPolicy(("media.test",), private_addresses=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
            port = await media_server(nursery, hosts)
            data = await fetch(http, f"http://media.test:{port}/a", policy)
            nursery.cancel_scope.cancel()
    assert data == b"media"
    assert resolver.asked == ["media.test"]
    assert hosts == [f"media.test:{port}"]


async def test_a_name_that_does_not_resolve_is_a_media_error() -> None:
    class Nowhere(Resolver):
        async def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    trio.socket.set_custom_hostname_resolver(Nowhere())
    async with httpx.AsyncClient() as http:
        with pytest.raises(
            cb.MediaError,
            match=r"cannot download media from 'media\.test': the name does not resolve",
        ):
            await fetch(http, "http://media.test/a", cb.MediaPolicy(("media.test",)))
