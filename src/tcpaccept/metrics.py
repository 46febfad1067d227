"""Prometheus metrics (--metrics): a sink for what arrives as items (listener drops, lost
events) and a collector that renders the state the main loop last published.

Scrapes never act: the main loop's tick reads the listener table (snapshot.py: map reads,
CPU merge, TTL expiry, container names), adds the drop and lost counts and publishes one
immutable ``MetricsState``; ``collect`` renders that state and reads nothing else. A
scrape that wants fresh figures asks for them (``request_fresh``) and the server waits for
the next tick's state (metrics_server.py).

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

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from . import exposition
from .config import DEFAULT_METRICS_LABELS, METRICS_LABELS
from .exposition import FAMILIES, LOST, OVERFLOW, Series, buckets
from .model import Container, Drop, Lost
from .output.escape import escape_text
from .sink import MAX_DROP_ENTRIES, KernelCountedSink
from .snapshot import (
    DEFAULT_TTL_S,
    EMPTY,
    AggregateSource,
    ContainerOf,
    ListenerTable,
    Snapshot,
)

DEFAULT_LABELS = DEFAULT_METRICS_LABELS  # one list, in config.py (the CLI checks by it)
KNOWN_LABELS = METRICS_LABELS
MAX_DROP_SERIES = MAX_DROP_ENTRIES
REFRESH_EVERY_S = 10.0  # the state's age at most when no scrape asks for a fresh one
HEALTHY_TICK_AGE_S = 5.0  # /healthz: the main loop ticks every 50 ms when it is well


@dataclass(frozen=True)
class _DropSeries:
    dropped: int
    backlog: int
    backlog_max: int
    seen_ns: int  # CLOCK_MONOTONIC, comparable with the kernel's last_seen_ns


@dataclass(frozen=True)
class MetricsState:
    """What one scrape renders: published by the main loop, never changed after."""

    generation: int
    listeners: Snapshot
    drops: tuple[tuple[tuple[str, ...], _DropSeries], ...] = ()
    lost: tuple[tuple[str, int], ...] = (("ring_buffer", 0), ("output_stalled", 0))
    drop_overflow: int = 0


class MetricsSink(KernelCountedSink):
    """A sink (drops, lost events) and a prometheus_client collector of the latest
    published state. Only the main loop (handle, tick, refresh) reads the kernel maps and
    the resolver; ``collect``, ``request_fresh`` and ``health`` are for the scrape thread
    and read nothing but ``state``."""

    def __init__(self, listeners: Union[ListenerTable, AggregateSource],
                 labels: Sequence[str] = DEFAULT_LABELS,
                 container_of: Optional[ContainerOf] = None, ttl_s: float = DEFAULT_TTL_S,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        unknown = [name for name in labels if name not in KNOWN_LABELS]
        if unknown:
            raise ValueError(f"unknown metrics labels: {', '.join(unknown)}")
        if not isinstance(listeners, ListenerTable):
            listeners = ListenerTable(listeners, ttl_s, container_of, clock_ns)
        self.table = listeners
        self.labels = tuple(labels)
        self.ttl_ns = self.table.ttl_ns
        self.clock_ns = clock_ns
        self._drops: dict[tuple[str, ...], _DropSeries] = {}
        self._drop_overflow = 0
        # Exported at 0 from the start, so that alerts can rate() them.
        self._lost: dict[str, int] = {"ring_buffer": 0, "output_stalled": 0}
        self.state = MetricsState(0, EMPTY)
        self._asked = 0  # the generation a waiting scrape wants (set by the scrape thread)
        self._next_refresh = 0.0
        self.last_tick: Optional[float] = None
        self.on_publish: list[Callable[[], None]] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- sink (main thread) --

    def count_lost(self, lost: Lost) -> None:
        reason = lost.reason.replace(" ", "_")
        self._lost[reason] = self._lost.get(reason, 0) + lost.count

    def count_drop(self, r: Drop) -> None:
        values = self._values(r.laddr, r.lport, r.netns, r.container, r.comm or "")
        series = self._drops.get(values)
        now = self.clock_ns()
        if series is None:
            if len(self._drops) >= MAX_DROP_SERIES:
                self._drop_overflow += 1
                return
            series = _DropSeries(0, 0, 0, now)
        self._drops[values] = _DropSeries(series.dropped + r.dropped, r.backlog,
                                          r.backlog_max, now)

    def tick(self, now: float) -> None:
        """Every loop turn: a heartbeat for /healthz; a new state when a scrape waits for
        one, else every REFRESH_EVERY_S (idle listeners expire on time without scrapes)."""
        self.last_tick = now
        if self._asked > self.state.generation or now >= self._next_refresh:
            self._next_refresh = now + REFRESH_EVERY_S
            self.refresh()

    def refresh(self) -> MetricsState:
        """Read the listener table, expire idle drop series, publish the new state."""
        listeners = self.table.refresh()
        now = listeners.taken_ns
        for values in [v for v, d in self._drops.items() if now - d.seen_ns > self.ttl_ns]:
            del self._drops[values]
        self.state = MetricsState(self.state.generation + 1, listeners,
                                  tuple(self._drops.items()), tuple(sorted(self._lost.items())),
                                  self._drop_overflow)
        for published in self.on_publish:
            published()
        return self.state

    def close(self) -> None:
        pass

    # -- for the scrape thread --

    @property
    def generation(self) -> int:
        return self.state.generation

    def request_fresh(self) -> int:
        """Ask the main loop for a state read after now; returns its generation."""
        wanted = self.state.generation + 1
        self._asked = max(self._asked, wanted)
        return wanted

    def health(self) -> Optional[str]:
        """None while the main loop ticks (the tracer is attached), else why not."""
        if self.last_tick is None:
            return "the tracer is not attached yet"
        age = time.monotonic() - self.last_tick
        if age > HEALTHY_TICK_AGE_S:
            return f"the main loop last ticked {age:.1f} s ago"
        return None

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

    # -- collector --

    def describe(self) -> list[Metric]:
        """Names only (no map read when the collector is registered)."""
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                 "histogram": HistogramMetricFamily}
        for name, kind, doc in FAMILIES:
            labels = {LOST: ["reason"], OVERFLOW: ["map"]}.get((name, kind, doc),
                                                               list(self.labels))
            yield kinds[kind](name, doc, labels=labels)

    def collect(self) -> Iterator[Metric]:
        return iter(self.render(self.state))

    def series(self, state: MetricsState) -> dict[tuple[str, ...], Series]:
        """The state's listeners and drop series merged by label values (labels left out
        merge several kernel keys into one series)."""
        series: dict[tuple[str, ...], Series] = {}
        for row in state.listeners.listeners.values():
            values = self._values(row.key.laddr, row.key.lport, row.key.netns,
                                  row.container, row.totals.comm)
            series.setdefault(values, Series()).add(row.totals)
        for values, drop in state.drops:
            s = series.setdefault(values, Series())
            s.drops = drop.dropped
            s.backlog_max = max(s.backlog_max, drop.backlog_max)
            if drop.seen_ns > s.last_seen_ns:  # a sample newer than the last accept
                s.last_seen_ns, s.backlog = drop.seen_ns, drop.backlog
        return series

    @staticmethod
    def _overflow(state: MetricsState) -> list[tuple[str, int]]:
        return [("listener_stats", state.listeners.listeners_overflow),
                ("drop_series", state.drop_overflow)]

    def exposition(self, openmetrics: bool, state: Optional[MetricsState] = None,
                   cancelled: Callable[[], bool] = lambda: False) -> bytearray:
        """The body of a scrape of ``state`` (the latest), written directly; raises
        exposition.Cancelled when ``cancelled()`` turns true."""
        state = state or self.state
        return exposition.render(self.labels, self.series(state), state.lost,
                                 self._overflow(state), openmetrics, cancelled)

    def render(self, state: MetricsState) -> list[Metric]:
        """The metric families of one published state (no map, no resolver), for
        prometheus_client's encoders."""
        accepts, latency, backlog, backlog_max, drops, lost, overflow = self._families()
        for values, s in self.series(state).items():
            labels = list(values)
            if s.slots is not None:
                accepts.add_metric(labels, s.accepts)
                latency.add_metric(labels, buckets(s.slots, s.latency_count),
                                   s.latency_sum_ns / 1e9)
            backlog.add_metric(labels, s.backlog)
            backlog_max.add_metric(labels, s.backlog_max)
            if s.drops is not None:
                drops.add_metric(labels, s.drops)
        for reason, count in state.lost:
            lost.add_metric([reason], count)
        for table, count in self._overflow(state):
            overflow.add_metric([table], count)
        return [accepts, latency, backlog, backlog_max, drops, lost, overflow]
