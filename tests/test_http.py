"""The library's own HTTP clients: encodings the bounded reader can inflate, one TLS context."""

from __future__ import annotations

import httpx
import pytest

from trio_chatbridge.platforms import lark, weixin


def seen_encodings() -> tuple[list[str], httpx.MockTransport]:
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("accept-encoding", ""))
        return httpx.Response(200, json={"ret": 0, "code": 0, "msg": "ok"})

    return asked, httpx.MockTransport(handle)


async def test_every_platform_client_asks_only_for_encodings_the_reader_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx adds br and zstd where their packages are installed; read_body refuses them.
    # This machine may lack them: make httpx's default what it is where they are installed.
    monkeypatch.setattr(httpx._client, "ACCEPT_ENCODING", "gzip, deflate, br, zstd")
    asked, transport = seen_encodings()
    ilink = weixin.ILinkClient("t0ken", transport=transport)
    api = lark.OpenAPI("app", "secret", transport=transport)
    try:
        await ilink.http.get("https://ilinkai.weixin.qq.com/x")
        await api.http.get("https://open.feishu.cn/x")
    finally:
        await ilink.aclose()
        await api.aclose()
    assert asked == ["gzip, deflate", "gzip, deflate"]


def test_connectors_share_one_tls_context() -> None:
    # Each context loads the CA bundle (~850 KiB, ~30 ms): one per account stalls a process
    # with a thousand accounts. httpx keeps the context on its connection pool.
    clients = [weixin.ILinkClient("t0ken").http, lark.OpenAPI("app", "secret").http]
    contexts = {id(c._transport._pool._ssl_context) for c in clients}  # type: ignore[attr-defined]
    assert len(contexts) == 1
