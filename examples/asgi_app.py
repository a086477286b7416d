"""A bridge inside an asyncio web application (ASGI), with an asyncio agent.

FastAPI, Starlette, aiohttp and most Python web apps run on asyncio; trio_chatbridge runs on
Trio. ``cb.asyncio_bridge`` runs the bridge as a Trio "guest" on the application's asyncio
loop, started and stopped by the app's lifespan, and ``cb.asyncio_agent`` lets the agent be
an ordinary asyncio coroutine (so it can use asyncio libraries: an LLM SDK, a database).

This app is plain ASGI so that it needs nothing but a server; the same two lines go into a
FastAPI or Starlette lifespan. It serves ``GET /status`` (the connectors' states, as JSON).
Run it (see wecom_env.py for the environment variables)::

    python examples/asgi_app.py               # hypercorn's asyncio worker on 127.0.0.1:8000
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
)
from wecom_env import say_when_up

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector

DEBOUNCE = cb.Debounce(window=1.0, max_delay=10.0)


async def agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
    """An asyncio agent: it runs as an asyncio task; ``reply`` forwards to the bridge."""
    await asyncio.sleep(0.1)  # e.g. `await client.chat.completions.create(...)`
    async with reply.stream() as out:
        await out.write("asyncio here. ")
        await out.write("you said: " + batch.text)


def make_app(
    connectors: Callable[[], Sequence[Connector]], store: cb.Store | None = None
) -> ASGIFramework:
    """The ASGI application; ``connectors()`` is called at startup."""
    running: list[cb.AsyncioBridge] = []  # the bridge while the app is up

    async def lifespan(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        await receive()  # {"type": "lifespan.startup"}
        bridge = cb.Bridge(
            connectors(),
            cb.asyncio_agent(agent),  # the asyncio coroutine, wrapped for the bridge
            debounce=DEBOUNCE,
            store=store or cb.SQLiteStore("asgi_app.db"),
        )
        # The bridge runs for the length of this block: started before the app takes
        # requests, stopped gracefully (pending messages answered) when the server stops.
        async with cb.asyncio_bridge(bridge) as bridge_running:
            running.append(bridge_running)
            # One line once the bot is connected (a Trio function: run in the bridge's run).
            saying = asyncio.create_task(bridge_running.call(say_when_up, bridge, "asgi_app"))
            await send({"type": "lifespan.startup.complete"})
            await receive()  # {"type": "lifespan.shutdown"}
            running.clear()
            saying.cancel()  # never up: nothing to say
            await asyncio.wait([saying])
        await send({"type": "lifespan.shutdown.complete"})

    async def status(scope: HTTPScope, send: ASGISendCallable) -> None:
        if scope["path"] != "/status" or not running:
            body, code = b'{"error": "not found"}', 404
        else:
            states = {name: s.state for name, s in running[0].bridge.status().items()}
            body, code = json.dumps(states).encode(), 200
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            await status(scope, send)

    return app


if __name__ == "__main__":
    import hypercorn.asyncio
    from hypercorn.config import Config
    from wecom_env import from_env

    chats = from_env()  # checked before the server starts: a missing variable is one line
    config = Config()
    config.bind = ["127.0.0.1:8000"]
    asyncio.run(hypercorn.asyncio.serve(make_app(lambda: chats), config))
