"""Prometheus metrics (--metrics): a tee in front of the chosen output sink.

Labels are per listener (local address, port, command): bounded by the listeners on the
host, never by clients, so a scan or a flood cannot blow up the series count.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily

from .drops import DropReport
from .event import Decoder, Event
from .run import Sink

LISTENER_LABELS = ("laddr", "lport", "comm")
# Queue latency from 10 us to ~10 s: fast servers sit in the first buckets, stuck ones last.
LATENCY_BUCKETS = tuple(10e-6 * 4**i for i in range(11))


class LostEventsCollector:
    """Reads the kernel's lost-event counter at scrape time."""

    def __init__(self, lost_events: Callable[[], int]) -> None:
        self.lost_events = lost_events

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("tcpaccept_lost_events",
                                  "Events the ring buffer could not hold",
                                  value=self.lost_events())


class MetricsTee:
    """Counts every event for Prometheus, then passes the decoded events on to the real
    sink (which, without --metrics, decodes and formats in one tight loop itself)."""

    def __init__(self, inner: Sink, decoder: Decoder, address: str, port: int,
                 lost_events: Optional[Callable[[], int]] = None) -> None:
        self.inner = inner
        self._decode = decoder.decode
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
        if lost_events is not None:
            self.registry.register(LostEventsCollector(lost_events))
        self._server, self._thread = start_http_server(port, address, registry=self.registry)

    def start(self) -> None:
        self.inner.start()

    def handle(self, records: list[bytes]) -> None:
        self.handle_events([self._decode(record) for record in records])

    def handle_events(self, events: list[Event]) -> None:
        for e in events:
            labels = (e.laddr, str(e.lport), e.comm)
            self.accepts.labels(*labels).inc()
            self.backlog.labels(*labels).set(e.backlog)
            self.backlog_max.labels(*labels).set(e.backlog_max)
            if e.queue_latency_ns is not None:
                self.latency.labels(*labels).observe(e.queue_latency_ns / 1e9)
        self.inner.handle_events(events)  # decoded once, shared with the real sink

    def handle_drops(self, reports: list[DropReport]) -> None:
        for r in reports:
            labels = (r.laddr, str(r.lport), r.comm or "?")
            self.drops.labels(*labels).inc(r.dropped)
            self.backlog.labels(*labels).set(r.backlog)
            self.backlog_max.labels(*labels).set(r.backlog_max)
        self.inner.handle_drops(reports)

    def tick(self, now: float) -> None:
        self.inner.tick(now)

    def finish(self) -> None:
        self.inner.finish()
        self._server.shutdown()
        self._server.server_close()
