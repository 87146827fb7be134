"""Prometheus metrics at ``GET /metrics``.

Almost everything is read from the engine at scrape time by a custom collector (sessions by
state, processes, pool profiles, memory), so the hot path pays nothing for it. The few counters
the API itself keeps (turns accepted, streams) are bumped once per request, never per event.
Each app has its own :class:`CollectorRegistry`, so several apps in one process (tests) do not
collide.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hotsession.hub import Hotsession

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HubCollector(Collector):
    """Reads the hub's state when Prometheus scrapes."""

    def __init__(self, hub: Hotsession) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        if not hub.started:
            return
        states = GaugeMetricFamily(
            "hotsession_sessions", "Open sessions by state.", labels=["state"]
        )
        counts: dict[str, int] = {}
        for session in hub.sessions.values():
            counts[session.state] = counts.get(session.state, 0) + 1
        for state, n in sorted(counts.items()):
            states.add_metric([state], n)
        yield states
        host: dict[str, Any] = hub.host.stats()
        yield GaugeMetricFamily(
            "hotsession_agent_processes", "Live agent processes.", value=host["children"]
        )
        yield CounterMetricFamily(
            "hotsession_spawns", "Agent processes spawned.", value=host["spawned_total"]
        )
        yield CounterMetricFamily(
            "hotsession_spawn_failures",
            "Agent spawns that failed (not counting refusals).",
            value=host["spawn_failures_total"],
        )
        yield CounterMetricFamily(
            "hotsession_spawn_refusals",
            "Agent starts the CLI refused because of what the client asked (a resume of an "
            "unknown conversation: HTTP 404 conversation_not_found).",
            value=host.get("spawn_refusals_total", 0),
        )
        evictions = CounterMetricFamily(
            "hotsession_evictions", "Processes ended to free memory or idle.", labels=["reason"]
        )
        for reason, n in sorted(hub.evictions.items()):
            evictions.add_metric([reason], n)
        yield evictions
        recycles = CounterMetricFamily(
            "hotsession_recycles", "Processes replaced by fresh ones.", labels=["reason"]
        )
        for reason, n in sorted(hub.recycles.items()):
            recycles.add_metric([reason], n)
        yield recycles
        yield from _pool_metrics(hub)


def _pool_metrics(hub: Hotsession) -> Iterator[Metric]:
    if hub.pool is None:
        return
    try:
        stats: dict[str, Any] = hub.pool.stats()
    except Exception:  # a bug in the pool's figures must not break the whole scrape
        log.exception("metrics: the pool's stats failed; pool metrics left out of this scrape")
        return
    fields = {
        "ready": "Ready spares.",
        "spawning": "Spares being spawned.",
        "target": "Target number of spares.",
        "live_sessions": "Sessions of the profile.",
    }
    for key, doc in fields.items():
        g = GaugeMetricFamily(f"hotsession_pool_{key}", doc, labels=["profile", "tenant"])
        for p in stats.get("profiles", []):
            if isinstance(p.get(key), int | float):
                g.add_metric([str(p.get("profile")), str(p.get("tenant"))], p[key])
        yield g
    for key in ("hits", "misses"):
        c = CounterMetricFamily(
            f"hotsession_pool_{key}", f"Pool claims that were {key}.", labels=["profile", "tenant"]
        )
        for p in stats.get("profiles", []):
            if isinstance(p.get(key), int | float):
                c.add_metric([str(p.get("profile")), str(p.get("tenant"))], p[key])
        yield c
    memory = stats.get("memory") or {}
    for key in ("used_mb", "budget_mb", "spares_mb", "sessions_mb"):
        if isinstance(memory.get(key), int | float):
            yield GaugeMetricFamily(
                f"hotsession_memory_{key}", f"Agent memory: {key}.", value=memory[key]
            )


class Metrics:
    """The app's metrics registry and its own counters."""

    def __init__(self, hub: Hotsession) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(HubCollector(hub))
        self.turns = Counter(
            "hotsession_api_turns",
            "Turns accepted over the API.",
            ["endpoint"],
            registry=self.registry,
        )
        self.sessions_created = Counter(
            "hotsession_api_sessions_created",
            "Sessions opened over the API, by where their process came from.",
            ["source"],
            registry=self.registry,
        )
        self.streams = Gauge(
            "hotsession_api_streams_open", "Open SSE streams.", registry=self.registry
        )

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
