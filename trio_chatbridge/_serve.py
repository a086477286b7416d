"""``cb.serve``: run a bridge as a whole program, stopping gracefully on SIGINT or SIGTERM."""

from __future__ import annotations

from ._bridge import Bridge


async def serve(bridge: Bridge, *, exit_when_all_failed: bool = True) -> int:
    """Run ``bridge`` until SIGINT or SIGTERM; returns an exit code for ``sys.exit``.

    Use it where a program would write ``trio.run(bridge.run)``:
    ``sys.exit(trio.run(cb.serve, bridge))``. The first signal (Ctrl-C, ``docker stop``,
    systemd) stops the bridge gracefully: pending sessions are flushed, running agents get
    ``shutdown_grace``, and the result is 0. A second signal stops at once (128 + its
    number). With ``exit_when_all_failed``, the bridge also stops when every connector has
    failed for good (bad credentials, replaced), returning 3: the codes of
    ``trio-chatbridge run`` (docs/service.md). Call it in the main thread, which receives the
    signals; inside a larger Trio application, start ``bridge.run`` in a nursery instead.

    If cancelled, the bridge stops at once, as a cancelled ``bridge.run`` does: journaled
    messages not yet answered are replayed at the next start.
    """
    from ._service import run_service  # the endpoint's dependencies load only for services

    return await run_service(bridge, exit_when_all_failed=exit_when_all_failed)
