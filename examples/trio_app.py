"""A bridge inside a Trio application that also runs another server.

Your application already has a nursery (here it serves a small TCP status port: connect to
it and it prints the bridge's status as JSON). The bridge is one more task in that nursery:
``await nursery.start(bridge.run)`` returns once the bridge runs, and ``bridge.shutdown()``
stops it gracefully (pending messages answered first). Run it::

    python examples/trio_app.py            # then: nc 127.0.0.1 8081
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial

import trio
from echo_bot import make_bridge

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector

STATUS_PORT = 8081


async def status_server(bridge: cb.Bridge, stream: trio.SocketStream) -> None:
    """Your other server: answers each connection with one JSON line, then hangs up."""
    status = {name: s.state for name, s in bridge.status().items()}
    async with stream:
        await stream.send_all(json.dumps(status).encode() + b"\n")


async def serve(
    connectors: Sequence[Connector],
    port: int = STATUS_PORT,
    *,
    store: cb.Store | None = None,
    task_status: trio.TaskStatus[tuple[cb.Bridge, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bridge and the status server side by side until cancelled.

    ``nursery.start(serve, ...)`` returns the bridge and the status port once both are up.
    """
    bridge = make_bridge(connectors, store)  # the echo bot's; any bridge fits here
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        serve_status = partial(trio.serve_tcp, partial(status_server, bridge), port)
        listeners = await nursery.start(partial(serve_status, host="127.0.0.1"))
        task_status.started((bridge, listeners[0].socket.getsockname()[1]))
        # Everything runs until this nursery is cancelled (Ctrl-C here). Cancelling stops the
        # bridge at once; what was received but not answered is answered at the next start.
        # For a graceful stop, call bridge.shutdown() and let bridge.run return first.


if __name__ == "__main__":
    from wecom_env import from_env

    trio.run(serve, from_env())
