"""One bridge process of the failover tests: ``python tests/failover_bridge.py CONFIG_JSON``.

It serves a WeCom bot and a WeChat account from the loopback emulators, on a RedisStore with
a short lease TTL. The agent writes each message's id to ``<out>/<pid>.txt`` when its run
starts (flushed at once, so a SIGKILL loses nothing written), then replies; a reply that
fails fails the run with the process's pid in the error the journal records.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import trio

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector
from trio_chatbridge.platforms import wecom, weixin


async def main(config: dict[str, Any]) -> None:
    out = (Path(config["out"]) / f"{os.getpid()}.txt").open("a", buffering=1)

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        for message in batch.messages:
            out.write(f"{message.id}\n")
        await trio.sleep(config["agent_delay"])
        try:
            await reply.send("ok")
        except cb.SendError as exc:  # journaled as this run's failure: say whose it was
            raise RuntimeError(f"pid {os.getpid()}: {exc}") from exc

    store = cb.RedisStore.from_url(config["redis"], prefix=config["prefix"], timeout=1.0)
    connectors: list[Connector] = [
        wecom.LongConnection(
            bot_id=config["wecom"]["bot_id"],
            secret=config["wecom"]["secret"],
            url=config["wecom"]["ws_url"],
        ),
        weixin.LongPoll(
            account="w",
            token=config["weixin"]["token"],
            base_url=config["weixin"]["base_url"],
            cdn_base_url=config["weixin"]["cdn_base_url"],
            rate_limit=weixin.RateLimit(burst=1000, per_second=1000.0),  # an emulator
        ),
    ]
    bridge = cb.Bridge(
        connectors,
        agent,
        store=store,
        leases=cb.Leases(ttl=config["ttl"]),
        debounce=cb.Debounce(window=0.05, max_delay=0.2),
        backoff=cb.Backoff(initial=0.2, maximum=1.0),
    )
    await bridge.run()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    trio.run(main, json.loads(sys.argv[1]))
