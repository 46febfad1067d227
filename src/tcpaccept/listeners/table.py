"""The listener table: the latest state of every TCP listener, merged from iterator reads.

Pure bookkeeping (no kernel): deduplication of a socket shared by forked workers, and a
drop counter per listener that starts at the listener's first sighting.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

from .record import ListenerRecord

# Listeners that vanished (closed, or a read that raced with their close), kept so one that
# shows up again resumes its counter instead of reporting its whole history as news.
_TOMBSTONES_MAX = 65536


@dataclass(frozen=True)
class ListenerState:
    """One listening socket as last read. `dropped` counts since tracing began: 0 at the
    first read for a listener that was already there, the kernel's whole count for one
    created later (all its drops are news). It never goes down (sk_drops wraps at 2^32)."""

    inode: int  # sockfs inode: the identity; /proc/PID/fd shows it as socket:[inode]
    netns: int
    family: int
    laddr: str
    lport: int
    backlog: int
    backlog_max: int
    syn_queue: int
    dropped: int
    pid: int  # the lowest pid holding it (the parent of forked workers), pid 1 last
    comm: str
    holders: int  # processes holding it (forked workers share one listener)
    first_seen_ns: int  # wall clock of the first read that saw it (Snapshot.read_ns: the last)


@dataclass(frozen=True)
class Snapshot:
    """An immutable read of the table, safe to hand to another thread."""

    listeners: Mapping[int, ListenerState]  # by inode
    read_ns: int  # wall clock of the read; 0 before the first
    read_cost_s: float  # how long that read took (kernel walk + decode)
    reads: int


EMPTY = Snapshot(MappingProxyType({}), 0, 0.0, 0)


class ListenerTable:
    def __init__(self) -> None:
        self._live: dict[int, ListenerState] = {}
        self._raw: dict[int, int] = {}  # inode -> kernel counter at the last read
        self._owner: dict[int, ListenerRecord] = {}  # inode -> the record its state came from
        self._tombstones: dict[int, tuple[int, int]] = {}  # inode -> (raw, dropped)
        self._reads = 0

    def merge(self, records: Iterable[ListenerRecord], now_ns: int,
              read_cost_s: float) -> Snapshot:
        first = self._reads == 0
        holders: dict[int, list[ListenerRecord]] = {}
        for r in records:
            holders.setdefault(r.sock_inode, []).append(r)
        live: dict[int, ListenerState] = {}
        raw: dict[int, int] = {}
        owners: dict[int, ListenerRecord] = {}
        for inode, seen in holders.items():
            owner = seen[0] if len(seen) == 1 else min(seen, key=_owner_rank)
            owners[inode] = owner
            previous = self._live.get(inode)
            if (previous is not None and self._owner[inode] is owner
                    and previous.holders == len(seen)):
                live[inode], raw[inode] = previous, owner.drops  # unchanged since the last read
                continue
            if previous is not None:
                before, dropped, born = self._raw[inode], previous.dropped, previous.first_seen_ns
            elif inode in self._tombstones:
                (before, dropped), born = self._tombstones.pop(inode), now_ns
            else:
                before, dropped, born = (owner.drops if first else 0), 0, now_ns
            dropped += (owner.drops - before) & 0xFFFFFFFF
            raw[inode] = owner.drops
            live[inode] = ListenerState(
                inode, owner.netns, owner.family, owner.laddr, owner.lport, owner.backlog,
                owner.backlog_max, owner.syn_queue, dropped, owner.pid, owner.comm, len(seen),
                born)
        for inode, state in self._live.items():
            if inode not in live:
                if len(self._tombstones) >= _TOMBSTONES_MAX:
                    del self._tombstones[next(iter(self._tombstones))]  # oldest first
                self._tombstones[inode] = (self._raw[inode], state.dropped)
        self._live, self._raw, self._owner = live, raw, owners
        self._reads += 1
        return Snapshot(MappingProxyType(dict(live)), now_ns, read_cost_s, self._reads)



def _owner_rank(record: ListenerRecord) -> tuple[bool, int]:
    """As drops/owners.py: the lowest pid, usually the parent that created the listener;
    pid 1 last (with socket activation systemd holds it too, but the service accepts)."""
    return record.pid == 1, record.pid
