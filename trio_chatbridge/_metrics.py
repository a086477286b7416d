"""The bridge's metrics in the Prometheus format, through prometheus-client.

Counters and connector states are read from the bridge at each scrape (``bridge.stats()``,
``bridge.status()``), so nothing is counted twice; the two latency histograms are fed as runs
start and replies go out. Each bridge gets a registry of its own: two bridges in one process
(tests, several apps) never collide in prometheus-client's global one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, get_args

import attrs
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._bridge import Bridge
from ._connector import ConnectorState
from ._latency import LatencyKind
from ._stats import Stats

PREFIX: Final = "chatbridge"
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)  # seconds
"""Spans the debounce window (3 s by default, capped at 20 s) and agents that think a while."""
_COUNTERS: Final = {
    "received": "New messages accepted by the inbox",
    "duplicates": "Messages dropped as already journaled",
    "replayed": "Unfinished messages replayed from the journal at start",
    "deferred": "Messages that arrived during shutdown, kept for the next start",
    "batches": "Batches released by the debouncer",
    "runs": "Agent runs started",
    "failures": "Agent runs that raised or timed out",
    "timeouts": "Agent runs cut off by run_timeout",
    "interrupts": "Agent runs interrupted by a newer batch",
    "abandoned": "Agent runs cut off by the shutdown grace",
    "replies": "Replies sent",
    "reconnects": "Connector restarts after a transient failure",
    "protocol_errors": "Bad frames or responses from a platform, survived",
    "undecodable": "Journal records that did not decode, set aside (never replayed)",
}


@attrs.frozen
class _BridgeCollector(Collector):
    bridge: Bridge

    def collect(self) -> Iterator[Metric]:
        stats = self.bridge.stats()
        for name, help_text in _COUNTERS.items():
            yield CounterMetricFamily(f"{PREFIX}_{name}", help_text, value=getattr(stats, name))
        yield from _connector_metrics(self.bridge)
        yield from _other_counters(stats)


def _connector_metrics(bridge: Bridge) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        f"{PREFIX}_connector_state",
        "1 for the state each connector is in, 0 for the others",
        labels=["connector", "state"],
    )
    restarts = CounterMetricFamily(
        f"{PREFIX}_connector_restarts",
        "Restarts of each connector after a transient failure",
        labels=["connector"],
    )
    up = CounterMetricFamily(
        f"{PREFIX}_connector_connects",
        "Times each connector came up (connected, or polled successfully)",
        labels=["connector"],
    )
    for name, status in bridge.status().items():
        for candidate in get_args(ConnectorState):
            state.add_metric([name, candidate], 1.0 if status.state == candidate else 0.0)
        restarts.add_metric([name], status.restarts)
        up.add_metric([name], status.connects)
    yield from (state, restarts, up)


def _other_counters(stats: Stats) -> Iterator[Metric]:
    """Connector-specific counters (``"<platform>.<what>"``) as one family labelled by both."""
    family = CounterMetricFamily(
        f"{PREFIX}_platform_events",
        "Connector-specific counters, by platform and what they count",
        labels=["platform", "event"],
    )
    for key, value in sorted(stats.other.items()):
        platform, _, event = key.rpartition(".")
        family.add_metric([platform, event], value)
    yield family


def bridge_registry(bridge: Bridge) -> CollectorRegistry:
    """A registry holding ``bridge``'s metrics; call before the bridge runs (the latency
    histograms listen from its start)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_BridgeCollector(bridge))
    histograms: dict[LatencyKind, Histogram] = {
        "agent_start": Histogram(
            f"{PREFIX}_agent_start_latency_seconds",
            "From receiving a batch's first message to its agent run starting",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        "reply": Histogram(
            f"{PREFIX}_reply_latency_seconds",
            "From receiving a batch's first message to the run's first reply sent",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
    }

    def observe(kind: LatencyKind, seconds: float) -> None:
        histograms[kind].observe(seconds)

    bridge.add_latency_listener(observe)
    return registry
