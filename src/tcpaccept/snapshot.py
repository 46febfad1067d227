"""One listener table owned by the main loop, published as immutable snapshots.

The main loop's tick is the only place that reads the kernel's aggregation maps: it merges
the CPUs (aggregate.py), deletes the listeners idle for the TTL (the one owner of that
TTL), names each listener's container (the resolver lives on the main thread) and then
publishes a ``Snapshot``. Readers on other threads (the Prometheus collector, the metrics
server) only ever see a finished snapshot: a plain attribute swap, no lock, no map.

A snapshot holds two views of the listeners: ``listeners``, what the aggregation maps
counted (accepts, latency; keyed by listener and accepting cgroup, so only listeners that
accepted), and ``sockets``, every listening socket the listener table of listeners/ last
read (backlog, SYN queue, drops since tracing began, owner), hung servers included. The
tick copies the listener watch's latest read (a reference, never a kernel read: that runs
on the watch's own thread) and names each socket's owner container, here, on the main
thread. ``sockets`` is None when there is no such table (not wanted, or the sock_diag
fallback).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Protocol

from .aggregate import ListenerKey, ListenerTotals
from .listeners.table import ListenerState
from .listeners.table import Snapshot as SocketsRead
from .model import Container

ContainerOf = Callable[[int], Optional[Container]]
SocketWanted = Callable[[ListenerState, Optional[Container]], bool]
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


@dataclass(frozen=True, slots=True)
class SocketRow:
    """One listening socket from the listener table, with its owner's container."""

    state: ListenerState
    container: Optional[Container] = None


@dataclass(frozen=True)
class Snapshot:
    """The listener table at one tick; never changed after it is published."""

    generation: int  # 0: nothing read yet
    taken_ns: int  # CLOCK_MONOTONIC, comparable with the kernel's last_seen_ns
    listeners: Mapping[ListenerKey, ListenerRow] = field(
        default_factory=lambda: MappingProxyType({}))
    listeners_overflow: int = 0  # accepts the kernel could not count: its map was full
    sockets: Optional[Mapping[int, SocketRow]] = None  # by socket inode; None: no table


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
        # The listener table's latest read (ListenerWatch.snapshot: never blocks), who owns
        # a socket's container (resolver.for_pid) and which sockets the user asked about.
        self.sockets_source: Optional[Callable[[], Optional[SocketsRead]]] = None
        self.owner_container: Optional[ContainerOf] = None
        self.socket_wanted: Optional[SocketWanted] = None
        self._seen: dict[int, SocketRow] = {}
        self._sockets_read: Optional[SocketsRead] = None
        self._sockets: Optional[Mapping[int, SocketRow]] = None

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
                               self.source.listeners_overflow(), self._read_sockets())
        return self.latest

    def _read_sockets(self) -> Optional[Mapping[int, SocketRow]]:
        """The listener table's latest read as rows; the same rows again while the watch
        has not read anew (4,096 listeners: no work per tick)."""
        read = self.sockets_source() if self.sockets_source is not None else None
        if read is None:
            return None
        if read is self._sockets_read:
            return self._sockets
        owner_of, wanted = self.owner_container, self.socket_wanted
        seen: dict[int, SocketRow] = {}  # every socket, wanted or not (owners known)
        for inode, state in read.listeners.items():
            row = self._seen.get(inode)
            if row is None or row.state is not state:  # the watch keeps unchanged states
                if row is None or row.state.pid != state.pid:
                    row = SocketRow(state, owner_of(state.pid)
                                    if owner_of is not None and state.pid else None)
                else:
                    row = SocketRow(state, row.container)
            seen[inode] = row
        self._seen, self._sockets_read = seen, read
        self._sockets = MappingProxyType(
            seen if wanted is None else
            {inode: row for inode, row in seen.items() if wanted(row.state, row.container)})
        return self._sockets
