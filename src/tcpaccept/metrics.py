"""Prometheus metrics (--metrics): a collector that reads the kernel's aggregation maps at
scrape time, and a sink for what still arrives as items (listener drops, lost events).

Accepts are counted in the kernel (bpf/aggregate.bpf.h), per listening socket, so the
agent mode (`--metrics ... --quiet`) sends no record through the ring buffer at all; with
lines printed too, the Accept items that reach this sink are ignored (already counted).

Series and their cardinality. The label set is chosen with ``labels`` (--metrics-labels):
  laddr, lport, netns   the listening socket (bound address: 0.0.0.0/:: for a wildcard):
                        one series per listener on the host, whatever the clients do;
  container, namespace, pod   from the accepting task's cgroup (``container_of``): at most
                        one series per listener and container;
  comm                  (on request only) the name of the LAST process that accepted. It is
                        a value of the listener's entry, not a key, so a process renaming
                        itself does not add series, but the label can change between
                        scrapes (a new series replaces the old one).
Listeners idle for ``ttl_s`` (default 600 s) are deleted from the kernel map and from the
drop counts, and their series disappear. If such a listener accepts again, its counters
restart from 0: Prometheus' rate()/increase() treat that as a counter reset, so rates stay
right but a raw counter value is only "since this listener was last active".

Every table is bounded: the kernel map by its max_entries (an accept that finds it full is
counted in tcpaccept_aggregation_overflow_total{map="listener_stats"}), the drop series by
MAX_DROP_SERIES (overflow map="drop_series").
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from .aggregate import AggregateReader, ListenerKey, ListenerTotals, slot_upper_us
from .model import Container, Drop, Item, Lost
from .output.escape import escape_text

DEFAULT_LABELS = ("laddr", "lport", "netns", "container", "namespace", "pod")
KNOWN_LABELS = DEFAULT_LABELS + ("comm",)
# The histogram's buckets are log2 slot edges of the kernel's histogram (every other one:
# 8 us, 32 us, ... 8.4 s), so they are exact counts, not interpolations.
BUCKET_SLOTS = tuple(range(3, 24, 2))
BUCKETS = tuple((floatToGoString(slot_upper_us(s) / 1e6), s) for s in BUCKET_SLOTS)
DEFAULT_TTL_S = 600.0
MAX_DROP_SERIES = 4096
ContainerOf = Callable[[int], Optional[Container]]


def _no_container(_cgroup_id: int) -> Optional[Container]:
    return None


@dataclass
class _Series:
    """One label set's figures: several kernel keys may share it (labels left out)."""

    accepts: int = 0
    latency_count: int = 0
    latency_sum_ns: int = 0
    slots: Optional[list[int]] = None
    backlog: int = 0
    backlog_max: int = 0
    last_seen_ns: int = -1
    drops: int = 0

    def add(self, t: ListenerTotals) -> None:
        self.accepts += t.accepts
        self.latency_count += t.latency_count
        self.latency_sum_ns += t.latency_sum_ns
        if self.slots is None:
            self.slots = list(t.latency_slots)
        else:
            self.slots = [a + b for a, b in zip(self.slots, t.latency_slots)]
        self.backlog_max = max(self.backlog_max, t.backlog_max)
        if t.last_seen_ns > self.last_seen_ns:
            self.last_seen_ns, self.backlog = t.last_seen_ns, t.backlog


@dataclass
class _DropSeries:
    dropped: int
    backlog: int
    backlog_max: int
    seen_ns: int  # CLOCK_MONOTONIC, comparable with the kernel's last_seen_ns


class MetricsSink:
    """A sink (drops, lost events) and a prometheus_client collector (everything)."""

    def __init__(self, aggregates: AggregateReader, labels: Sequence[str] = DEFAULT_LABELS,
                 container_of: Optional[ContainerOf] = None, ttl_s: float = DEFAULT_TTL_S,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        unknown = [name for name in labels if name not in KNOWN_LABELS]
        if unknown:
            raise ValueError(f"unknown metrics labels: {', '.join(unknown)}")
        self.aggregates = aggregates
        self.labels = tuple(labels)
        self.container_of = container_of or _no_container
        self.ttl_ns = int(ttl_s * 1e9)
        self.clock_ns = clock_ns
        self._lock = threading.Lock()
        self._drops: dict[tuple[str, ...], _DropSeries] = {}
        self._drop_overflow = 0
        self._lost: dict[str, int] = {"ring_buffer": 0}  # exported at 0, so alerts can rate()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- sink --

    def handle(self, items: Sequence[Item]) -> None:
        if not items:
            return
        kind = type(items[0])
        if kind is Drop:
            with self._lock:
                for r in items:
                    self._count_drop(r)  # type: ignore[arg-type]
        elif kind is Lost:
            with self._lock:
                for lost in items:
                    reason = lost.reason.replace(" ", "_")  # type: ignore[union-attr]
                    self._lost[reason] = self._lost.get(reason, 0) + lost.count  # type: ignore
        # Accept items (lines printed too): the kernel has counted them already.

    def _count_drop(self, r: Drop) -> None:
        values = self._values(r.laddr, r.lport, r.netns, r.container, r.comm or "")
        series = self._drops.get(values)
        now = self.clock_ns()
        if series is None:
            if len(self._drops) >= MAX_DROP_SERIES:
                self._drop_overflow += 1
                return
            series = self._drops[values] = _DropSeries(0, 0, 0, now)
        series.dropped += r.dropped
        series.backlog, series.backlog_max, series.seen_ns = r.backlog, r.backlog_max, now

    def tick(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass

    # -- labels --

    def _values(self, laddr: str, lport: int, netns: int, container: Optional[Container],
                comm: str) -> tuple[str, ...]:
        # Names from the traced system, escaped as in text output: no control characters
        # on a scraper's terminal, and no lone surrogate (invalid UTF-8) that the
        # exposition could not encode (the whole scrape would fail).
        known = {"laddr": laddr, "lport": str(lport), "netns": str(netns),
                 "comm": escape_text(comm),
                 "container": escape_text(container.short) if container else "",
                 "namespace": escape_text(container.namespace or "") if container else "",
                 "pod": escape_text(container.pod or "") if container else ""}
        return tuple(known[name] for name in self.labels)

    def _listener_values(self, key: ListenerKey, totals: ListenerTotals) -> tuple[str, ...]:
        wants_container = any(n in self.labels for n in ("container", "namespace", "pod"))
        container = self.container_of(key.cgroup_id) if wants_container else None
        return self._values(key.laddr, key.lport, key.netns, container, totals.comm)

    # -- collector --

    def describe(self) -> list[Metric]:
        """Names only (no map read when the collector is registered)."""
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        labels = list(self.labels)
        yield CounterMetricFamily("tcpaccept_accepts", "TCP connections accepted",
                                  labels=labels)
        yield HistogramMetricFamily("tcpaccept_queue_latency_seconds",
                                    "Time from ESTABLISHED to accept() (log2 buckets)",
                                    labels=labels)
        yield GaugeMetricFamily("tcpaccept_listen_backlog",
                                "Listener accept queue length at its last accept or sample",
                                labels=labels)
        yield GaugeMetricFamily("tcpaccept_listen_backlog_max",
                                "Listener accept queue limit", labels=labels)
        yield CounterMetricFamily("tcpaccept_listen_drops",
                                  "Connections a listener dropped on a full queue",
                                  labels=labels)
        yield CounterMetricFamily("tcpaccept_lost_events",
                                  "Events that never reached the output", labels=["reason"])
        yield CounterMetricFamily("tcpaccept_aggregation_overflow",
                                  "Items not counted because a bounded table was full",
                                  labels=["map"])

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            return iter(self._collect_locked())

    def _collect_locked(self) -> list[Metric]:
        now = self.clock_ns()
        listeners = self.aggregates.read_listeners()
        for key in self.aggregates.expire(listeners, now, self.ttl_ns):
            del listeners[key]
        for values in [v for v, d in self._drops.items() if now - d.seen_ns > self.ttl_ns]:
            del self._drops[values]
        series: dict[tuple[str, ...], _Series] = {}
        for key, totals in listeners.items():
            series.setdefault(self._listener_values(key, totals), _Series()).add(totals)
        for values, drop in self._drops.items():
            s = series.setdefault(values, _Series())
            s.drops = drop.dropped
            s.backlog_max = max(s.backlog_max, drop.backlog_max)
            if drop.seen_ns > s.last_seen_ns:  # a sample newer than the last accept
                s.last_seen_ns, s.backlog = drop.seen_ns, drop.backlog
        accepts, latency, backlog, backlog_max, drops, lost, overflow = self._families()
        for values, s in series.items():
            labels = list(values)
            if s.slots is not None:
                accepts.add_metric(labels, s.accepts)
                latency.add_metric(labels, _buckets(s.slots, s.latency_count),
                                   s.latency_sum_ns / 1e9)
            backlog.add_metric(labels, s.backlog)
            backlog_max.add_metric(labels, s.backlog_max)
            if values in self._drops:
                drops.add_metric(labels, s.drops)
        for reason, count in sorted(self._lost.items()):
            lost.add_metric([reason], count)
        overflow.add_metric(["listener_stats"], self.aggregates.listeners_overflow())
        overflow.add_metric(["drop_series"], self._drop_overflow)
        return [accepts, latency, backlog, backlog_max, drops, lost, overflow]


def _buckets(slots: list[int], count: int) -> list[tuple[str, float]]:
    """Cumulative counts at each bucket edge, from the kernel's log2 slots."""
    out, running, next_slot = [], 0, 0
    for le, upto in BUCKETS:
        running += sum(slots[next_slot:upto + 1])
        next_slot = upto + 1
        out.append((le, running))
    out.append(("+Inf", count))
    return out
