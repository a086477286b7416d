"""A bridge inside a Trio application that also runs another server, stopped gracefully by
Ctrl-C or SIGTERM (systemd, ``docker stop``).

Your application already has a nursery (here it serves a small TCP status port: connect to
it and it prints the bridge's status as JSON). The bridge is one more task in that nursery:
``await nursery.start(bridge.run)`` returns once the bridge accepts messages. On a signal,
``bridge.shutdown()`` stops it gracefully: messages still waiting for their quiet window are
answered first; a second signal stops at once. Run it::

    python examples/trio_app.py            # then: nc 127.0.0.1 8081
"""

from __future__ import annotations

import json
import signal
from collections.abc import Sequence
from functools import partial

import trio
from echo_bot import make_bridge
from wecom_env import say_when_up

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
    """Run the bridge and the status server side by side until SIGINT or SIGTERM.

    ``nursery.start(serve, ...)`` returns the bridge and the status port once both are up.
    """
    bridge = make_bridge(connectors, store)  # the echo bot's; any bridge fits here
    # Signals are caught from here on: Ctrl-C no longer interrupts with a traceback.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run_bridge(*, task_status: trio.TaskStatus[None]) -> None:
                await bridge.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # the bridge has stopped: so does the app

            await nursery.start(run_bridge)
            serve_status = partial(trio.serve_tcp, partial(status_server, bridge), port)
            listeners = await nursery.start(partial(serve_status, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(say_when_up, bridge, f"trio_app (status: nc 127.0.0.1 {port})")
            task_status.started((bridge, port))
            stopping = False
            async for signum in signals:
                if stopping:  # a second signal: stop at once (the journal keeps the rest)
                    nursery.cancel_scope.cancel()
                    break
                print(f"{signal.Signals(signum).name}: stopping gracefully")
                bridge.shutdown()  # run_bridge returns once pending messages are answered
                stopping = True


if __name__ == "__main__":
    from wecom_env import from_env

    trio.run(serve, from_env())
