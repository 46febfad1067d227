"""Reads the in-kernel aggregation maps (bpf/aggregate.bpf.h) for the listener table.

The kernel counts per listening socket (network namespace, bound address, family, port,
cgroup id) in a per-CPU hash; this module walks it (``libbpf.Map.iter_keys`` and
``lookup_per_cpu``), merges the CPUs (counts and histogram slots summed, the peak's
maximum, the last values from the CPU that saw the latest accept) and hands out plain
``ListenerTotals``. It also deletes listeners idle for longer than a TTL (``expire``, called
by snapshot.ListenerTable only) and reads the bounded remotes LRU and the overflow counters.

Every struct (listener_key, listener_stats, remote_count_key) is read from the object's
BTF by name (layout.StructLayout) and decoded into named members: an object whose structs
lack a member this module reads, or have it in another size, fails with one line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union

from . import libbpf
from .btf import BTF_KIND_ENUM, Btf
from .layout import StructLayout

LATENCY_SLOTS = 32  # LATENCY_SLOTS in aggregate.bpf.h (checked against the object)
AF_INET, AF_INET6 = 2, 10
COUNTER_ENUM = "aggregate_counter"
# enum aggregate_counter's values, used when the object's BTF does not carry the enum
# (no variable of its type); read from the BTF when it does.
COUNTER_DEFAULTS = {"AGG_LISTENERS_FULL": 0, "AGG_REMOTE_INSERTS": 1}
# What this module reads of each struct, by member: bytes (0: any length).
NEEDED = {
    "listener_key": dict(cgroup_id=8, netns=4, family=2, lport=2, laddr=16),
    "listener_stats": dict(accepts=8, latency_count=8, latency_sum_ns=8, last_seen_ns=8,
                           latency_slots=8 * LATENCY_SLOTS, backlog=4, backlog_peak=4,
                           backlog_max=4, peak_epoch=4, pid=4, comm=0),
    "remote_count_key": dict(listener=0, raddr=16),
}
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


@dataclass(frozen=True)
class Layouts:
    """The aggregation structs of one object, and its counter indices."""

    key: StructLayout
    stats: StructLayout
    remote_key: StructLayout
    counters: dict[str, int]

    @classmethod
    def of_file(cls, path: str) -> Layouts:
        """From a built object file (its BTF, no kernel needed)."""
        btf = Btf.parse_elf(path)
        try:
            return cls.of(btf, os.path.basename(path))
        finally:
            btf.close()

    @classmethod
    def of(cls, btf: Btf, source: str) -> Layouts:
        key, stats, remote = (StructLayout.of(btf, name, source).require(**members)
                              for name, members in NEEDED.items())
        enum_id = btf.find(COUNTER_ENUM, BTF_KIND_ENUM)
        counters = btf.enum_values(enum_id) if enum_id is not None else COUNTER_DEFAULTS
        return cls(key, stats, remote, counters)


@dataclass(frozen=True)
class ListenerKey:
    """A listening socket as the kernel keys it (plus the accepting task's cgroup)."""

    netns: int
    family: int  # 4 or 6: the listener's (a dual-stack listener is 6)
    laddr: str  # the bound address: 0.0.0.0 / :: for a wildcard listener
    lport: int
    cgroup_id: int

    @classmethod
    def of(cls, key: dict[str, Any]) -> ListenerKey:
        laddr, netns, lport, cgroup_id = key["laddr"], key["netns"], key["lport"], \
            key["cgroup_id"]
        if key["family"] == AF_INET:
            return cls(netns, 4, str(ipaddress.IPv4Address(laddr[:4])), lport, cgroup_id)
        return cls(netns, 6, str(ipaddress.IPv6Address(laddr)), lport, cgroup_id)

    def fields(self) -> dict[str, Any]:
        """The members of struct listener_key for this key."""
        if self.family == 4:
            laddr, family = ipaddress.IPv4Address(self.laddr).packed.ljust(16, b"\0"), AF_INET
        else:
            laddr, family = ipaddress.IPv6Address(self.laddr).packed, AF_INET6
        return dict(cgroup_id=self.cgroup_id, netns=self.netns, family=family,
                    lport=self.lport, laddr=laddr)


@dataclass(frozen=True)
class ListenerTotals:
    """One listener's figures since it was first seen, all CPUs merged."""

    accepts: int = 0
    latency_count: int = 0
    latency_sum_ns: int = 0
    latency_slots: tuple[int, ...] = (0,) * LATENCY_SLOTS
    last_seen_ns: int = 0  # CLOCK_MONOTONIC (bpf_ktime_get_ns) of the latest accept
    backlog: int = 0  # after the latest accept
    backlog_max: int = 0
    backlog_peak: int = 0  # highest in the epoch asked for (summary interval); else 0
    pid: int = 0  # the latest accepting process and its name
    comm: str = ""


def merge_cpus(values: list[dict[str, Any]], peak_epoch: Optional[int] = None
               ) -> ListenerTotals:
    """Merge the per-CPU struct listener_stats (decoded, members by name)."""
    accepts = latency_count = latency_sum = 0
    latest: Optional[dict[str, Any]] = None
    peak = backlog_max = 0
    for v in values:
        accepts += v["accepts"]
        latency_count += v["latency_count"]
        latency_sum += v["latency_sum_ns"]
        backlog_max = max(backlog_max, v["backlog_max"])
        if peak_epoch is not None and v["peak_epoch"] == peak_epoch and v["accepts"]:
            peak = max(peak, v["backlog_peak"])
        if v["accepts"] and (latest is None or v["last_seen_ns"] > latest["last_seen_ns"]):
            latest = v
    slots = tuple(map(sum, zip(*(v["latency_slots"] for v in values))))
    totals = ListenerTotals(accepts, latency_count, latency_sum, slots or (0,) * LATENCY_SLOTS,
                            backlog_max=backlog_max, backlog_peak=peak)
    if latest is None:
        return totals
    comm = latest["comm"].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    return dataclasses.replace(totals, last_seen_ns=latest["last_seen_ns"],
                               backlog=latest["backlog"], pid=latest["pid"], comm=comm)


def remote_address(raw: bytes) -> str:
    """The remotes map keeps IPv4 clients IPv4-mapped: show them as IPv4."""
    if raw[:12] == _V4_MAPPED:
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


LISTENERS_MAX = 4096  # listener_stats' max_entries in the object
MAP_BUDGET_BYTES = 64 << 20  # per-CPU values of listener_stats, all CPUs together


def listener_entries(ncpus: int, value_bytes: int) -> int:
    """listener_stats' size: 4096 listeners, fewer where a value times the CPUs would
    pass the budget (a 128-CPU host: 1598), never under 256."""
    return max(256, min(LISTENERS_MAX, MAP_BUDGET_BYTES // (value_bytes * ncpus)))


def size_maps(obj: libbpf.BpfObject, remotes: bool, ncpus: Optional[int] = None,
              aggregating: bool = True) -> None:
    """Before load: check the structs and size the aggregation maps for this host and
    mode. listener_stats is preallocated (see bpf/aggregate.bpf.h): 1 entry when nothing
    aggregates."""
    layouts = Layouts.of(Btf.of_object(obj), os.path.basename(obj.path))
    entries = (listener_entries(ncpus or libbpf.possible_cpus(), layouts.stats.size)
               if aggregating else 1)
    obj.map("listener_stats").set_max_entries(entries)
    if not remotes:  # only -s reads the (preallocated) remotes LRU
        obj.map("remote_counts").set_max_entries(1)


class MapSource(Protocol):
    """What the reader needs of the tracer."""

    bpf_object: Union[str, os.PathLike]  # the object file it loaded

    def bpf_map(self, name: str) -> libbpf.Map: ...


def _number(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little")


class AggregateReader:
    """The aggregation maps of one started tracer; main thread only (the listener table)."""

    def __init__(self, source: MapSource, ncpus: Optional[int] = None) -> None:
        self.ncpus = ncpus or libbpf.possible_cpus()
        self.layouts = Layouts.of_file(str(source.bpf_object))
        self.listeners = source.bpf_map("listener_stats")
        self.remotes = source.bpf_map("remote_counts")
        self.counters = source.bpf_map("aggregate_counters")
        self.epoch_map = source.bpf_map("aggregate_epoch")
        self.epoch = 0

    def _listener(self, raw_key: bytes) -> Optional[list[dict[str, Any]]]:
        per_cpu = self.listeners.lookup_per_cpu(raw_key, self.ncpus)
        return None if per_cpu is None else [self.layouts.stats.decode(v) for v in per_cpu]

    def read_listeners(self, peak_epoch: Optional[int] = None
                       ) -> dict[ListenerKey, ListenerTotals]:
        out = {}
        for raw_key in self.listeners.iter_keys():
            per_cpu = self._listener(raw_key)
            if per_cpu is not None:
                out[ListenerKey.of(self.layouts.key.decode(raw_key))] = merge_cpus(
                    per_cpu, peak_epoch)
        return out

    def expire(self, listeners: dict[ListenerKey, ListenerTotals], now_ns: int,
               ttl_ns: int) -> list[ListenerKey]:
        """Delete the entries of listeners idle for ttl_ns (their counters restart from 0 if
        they accept again); returns the keys deleted, which callers drop from their dicts."""
        gone = []
        for key, totals in listeners.items():
            if now_ns - totals.last_seen_ns <= ttl_ns:
                continue
            raw = self.layouts.key.encode(**key.fields())
            # Read again right before the delete: an accept since the walk keeps the entry
            # (what remains is the few-microsecond window between this read and the delete).
            fresh = self._listener(raw)
            if fresh is not None and merge_cpus(fresh).last_seen_ns != totals.last_seen_ns:
                continue
            self.listeners.delete(raw)
            gone.append(key)
        return gone

    def read_remotes(self) -> dict[tuple[ListenerKey, str], int]:
        out: dict[tuple[ListenerKey, str], int] = {}
        for raw_key in self.remotes.iter_keys():
            value = self.remotes.lookup(raw_key, 8)
            if value is None:
                continue
            remote = self.layouts.remote_key.decode(raw_key)
            listener = ListenerKey.of(self.layouts.key.decode(remote["listener"]))
            out[(listener, remote_address(remote["raddr"]))] = int.from_bytes(value, "little")
        return out

    def counter(self, name: str) -> int:
        index = _number(self.layouts.counters[name], 4)
        per_cpu = self.counters.lookup_per_cpu(index, self.ncpus) or []
        return sum(int.from_bytes(v, "little") for v in per_cpu)

    def listeners_overflow(self) -> int:
        """Accepts the kernel could not count: listener_stats was full."""
        return self.counter("AGG_LISTENERS_FULL")

    def remotes_evicted(self, entries_now: int) -> int:
        """How many remotes the LRU pushed out: every insert not present any more (user
        space never deletes from it)."""
        return max(0, self.counter("AGG_REMOTE_INSERTS") - entries_now)

    def next_epoch(self) -> int:
        """Start a new summary interval for the backlog peaks; returns the one that ended."""
        ended, self.epoch = self.epoch, self.epoch + 1
        self.epoch_map.update(_number(0, 4), _number(self.epoch, 4))
        return ended


# Summary percentiles and Prometheus buckets both come from the log2 slots: slot 0 holds
# 0 us, slot k holds [2^(k-1), 2^k) us. A value reported from a slot is its upper edge
# 2^k us, so it overstates the true value by less than a factor of 2 (never understates).
def slot_upper_us(slot: int) -> int:
    return 1 << slot


def slot_lower_us(slot: int) -> int:
    return (1 << slot) >> 1


def slot_percentile_us(slots: tuple[int, ...], fraction: float) -> Optional[int]:
    """Nearest-rank percentile as the upper edge of the slot holding that rank."""
    total = sum(slots)
    if total <= 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    running = 0
    for slot, count in enumerate(slots):
        running += count
        if running >= rank:
            return slot_upper_us(slot)
    return slot_upper_us(len(slots) - 1)


def slot_max_us(slots: tuple[int, ...]) -> Optional[int]:
    nonempty = [slot for slot, count in enumerate(slots) if count]
    return slot_upper_us(nonempty[-1]) if nonempty else None
