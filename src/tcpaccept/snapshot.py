"""One listener table owned by the main loop, published as immutable snapshots.

The main loop's tick is the only place that reads the kernel's aggregation maps: it merges
the CPUs (aggregate.py), deletes the listeners idle for the TTL (the one owner of that
TTL), names each listener's container (the resolver lives on the main thread) and then
publishes a ``Snapshot``. Readers on other threads (the Prometheus collector, the metrics
server) only ever see a finished snapshot: a plain attribute swap, no lock, no map.

A snapshot is a set of rows keyed by listener; later sources of per-listener state (the
listener table of the drops package: backlog, SYN queue, owner) become more fields of
``ListenerRow`` or more mappings of ``Snapshot``, without changing who reads what.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Protocol

from .aggregate import ListenerKey, ListenerTotals
from .model import Container

ContainerOf = Callable[[int], Optional[Container]]
DEFAULT_TTL_S = 600.0


class AggregateSource(Protocol):
    """What the table needs of aggregate.AggregateReader."""

    def read_listeners(self, peak_epoch: Optional[int] = None
                       ) -> dict[ListenerKey, ListenerTotals]: ...
    def expire(self, listeners: dict[ListenerKey, ListenerTotals], now_ns: int,
               ttl_ns: int) -> list[ListenerKey]: ...
    def listeners_overflow(self) -> int: ...
    def next_epoch(self) -> int: ...


@dataclass(frozen=True)
class ListenerRow:
    """One listener (as the kernel keys it) with everything known about it."""

    key: ListenerKey
    totals: ListenerTotals
    container: Optional[Container] = None


@dataclass(frozen=True)
class Snapshot:
    """The listener table at one tick; never changed after it is published."""

    generation: int  # 0: nothing read yet
    taken_ns: int  # CLOCK_MONOTONIC, comparable with the kernel's last_seen_ns
    listeners: Mapping[ListenerKey, ListenerRow] = field(
        default_factory=lambda: MappingProxyType({}))
    listeners_overflow: int = 0  # accepts the kernel could not count: its map was full


EMPTY = Snapshot(0, 0)


class ListenerTable:
    """Reads, merges, expires and names the kernel's listeners; main thread only."""

    def __init__(self, source: AggregateSource, ttl_s: float = DEFAULT_TTL_S,
                 container_of: Optional[ContainerOf] = None,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.source = source
        self.ttl_ns = int(ttl_s * 1e9)
        self.container_of = container_of
        self.clock_ns = clock_ns
        self.latest = EMPTY

    def refresh(self, new_epoch: bool = False) -> Snapshot:
        """Read the maps now and publish what they hold. ``new_epoch`` (summary intervals)
        ends the backlog-peak epoch and reads the peaks of the one that ended."""
        ended = self.source.next_epoch() if new_epoch else None
        listeners = self.source.read_listeners(peak_epoch=ended)
        now = self.clock_ns()
        for key in self.source.expire(listeners, now, self.ttl_ns):
            del listeners[key]
        container_of = self.container_of
        rows = {key: ListenerRow(key, totals,
                                 container_of(key.cgroup_id) if container_of else None)
                for key, totals in listeners.items()}
        self.latest = Snapshot(self.latest.generation + 1, now, MappingProxyType(rows),
                               self.source.listeners_overflow())
        return self.latest
