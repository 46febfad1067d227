"""Prometheus metrics (--metrics): a sink that counts what flows past it.

Labels are per listener (local address, port, command): bounded by the listeners on the
host, never by clients, so a scan or a flood cannot blow up the series count. Serving the
registry is the session's business (it owns the HTTP server), not this sink's.
"""

from __future__ import annotations

from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from .model import Accept, Drop, Item, Lost

LISTENER_LABELS = ("laddr", "lport", "comm")
# Queue latency from 10 us to ~10 s: fast servers sit in the first buckets, stuck ones last.
LATENCY_BUCKETS = tuple(10e-6 * 4**i for i in range(11))


class MetricsSink:
    """Counts accepts, drops and lost events into its own registry."""

    def __init__(self) -> None:
        disable_created_metrics()  # *_created series only double the scrape size here
        self.registry = CollectorRegistry(auto_describe=True)
        self.accepts = Counter("tcpaccept_accepts", "TCP connections accepted",
                               LISTENER_LABELS, registry=self.registry)
        self.latency = Histogram("tcpaccept_queue_latency_seconds",
                                 "Time from ESTABLISHED to accept()", LISTENER_LABELS,
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.backlog = Gauge("tcpaccept_listen_backlog",
                             "Listener accept queue length at its last accept or sample",
                             LISTENER_LABELS, registry=self.registry)
        self.backlog_max = Gauge("tcpaccept_listen_backlog_max",
                                 "Listener accept queue limit", LISTENER_LABELS,
                                 registry=self.registry)
        self.drops = Counter("tcpaccept_listen_drops",
                             "Connections a listener dropped on a full queue",
                             LISTENER_LABELS, registry=self.registry)
        self.lost = Counter("tcpaccept_lost_events", "Events that never reached the output",
                            ("reason",), registry=self.registry)
        self.lost.labels("ring_buffer")  # exported at 0 from the start, so alerts can rate() it

    def handle(self, items: Sequence[Item]) -> None:
        if not items:
            return
        kind = type(items[0])
        if kind is Accept:
            self._count_accepts(items)  # type: ignore[arg-type]
        elif kind is Drop:
            self._count_drops(items)  # type: ignore[arg-type]
        elif kind is Lost:
            for lost in items:
                self.lost.labels(lost.reason.replace(" ", "_")).inc(lost.count)  # type: ignore

    def _count_accepts(self, accepts: Sequence[Accept]) -> None:
        for e in accepts:
            labels = (e.laddr, str(e.lport), e.comm)
            self.accepts.labels(*labels).inc()
            self.backlog.labels(*labels).set(e.backlog)
            self.backlog_max.labels(*labels).set(e.backlog_max)
            if e.queue_latency_ns is not None:
                self.latency.labels(*labels).observe(e.queue_latency_ns / 1e9)

    def _count_drops(self, drops: Sequence[Drop]) -> None:
        for r in drops:
            labels = (r.laddr, str(r.lport), r.comm or "?")
            self.drops.labels(*labels).inc(r.dropped)
            self.backlog.labels(*labels).set(r.backlog)
            self.backlog_max.labels(*labels).set(r.backlog_max)

    def tick(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass
