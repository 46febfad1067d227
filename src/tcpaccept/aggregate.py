"""Reads the in-kernel aggregation maps (bpf/aggregate.bpf.h) for the metrics and summary sinks.

The kernel counts per listening socket (network namespace, bound address, family, port,
cgroup id) in a per-CPU hash; this module walks it with bpf_map_get_next_key and
bpf_map_lookup_elem, merges the CPUs (counts and histogram slots summed, the peak's
maximum, the last values from the CPU that saw the latest accept) and hands out plain
``ListenerTotals``. It also deletes listeners idle for longer than a TTL (``expire``) and
reads the bounded remotes LRU and the overflow counters.

Layouts are checked against the map's key and value sizes when the reader is made: a BPF
object from another build fails with one line instead of decoding garbage.
"""

from __future__ import annotations

import ctypes
import ipaddress
import math
import os
import struct
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol

from . import libbpf
from .btf import BTF_KIND_STRUCT, Btf
from .errors import TcpacceptError

LATENCY_SLOTS = 32  # LATENCY_SLOTS in aggregate.bpf.h
TASK_COMM_LEN = 16
AF_INET, AF_INET6 = 2, 10
# struct listener_key: cgroup_id, netns, family, lport, laddr[16]
LISTENER_KEY = struct.Struct("<QIHH16s")
# struct listener_stats: accepts, latency_count, latency_sum_ns, last_seen_ns, slots[32],
# backlog, backlog_peak, backlog_max, peak_epoch, pid, pad, comm[16]
LISTENER_STATS = struct.Struct(f"<4Q{LATENCY_SLOTS}Q6I{TASK_COMM_LEN}s")
REMOTE_KEY = struct.Struct(f"<{LISTENER_KEY.size}s16s")
COUNTER = struct.Struct("<Q")
# enum aggregate_counter
AGG_LISTENERS_FULL, AGG_REMOTE_INSERTS, AGG_COUNTERS = 0, 1, 2
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


@dataclass(frozen=True)
class ListenerKey:
    """A listening socket as the kernel keys it (plus the accepting task's cgroup)."""

    netns: int
    family: int  # 4 or 6: the listener's (a dual-stack listener is 6)
    laddr: str  # the bound address: 0.0.0.0 / :: for a wildcard listener
    lport: int
    cgroup_id: int

    @classmethod
    def unpack(cls, raw: bytes) -> ListenerKey:
        cgroup_id, netns, family, lport, laddr = LISTENER_KEY.unpack(raw)
        if family == AF_INET:
            return cls(netns, 4, str(ipaddress.IPv4Address(laddr[:4])), lport, cgroup_id)
        return cls(netns, 6, str(ipaddress.IPv6Address(laddr)), lport, cgroup_id)


@dataclass
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


def merge_cpus(values: list[tuple], peak_epoch: Optional[int] = None) -> ListenerTotals:
    """Merge the per-CPU struct listener_stats tuples (LISTENER_STATS.unpack order)."""
    slots = [0] * LATENCY_SLOTS
    accepts = latency_count = latency_sum = 0
    latest: Optional[tuple] = None
    peak = backlog_max = 0
    for v in values:
        accepts += v[0]
        latency_count += v[1]
        latency_sum += v[2]
        for i, n in enumerate(v[4:4 + LATENCY_SLOTS]):
            slots[i] += n
        backlog, backlog_peak, cpu_backlog_max, epoch = v[36:40]
        backlog_max = max(backlog_max, cpu_backlog_max)
        if peak_epoch is not None and epoch == peak_epoch and v[0]:
            peak = max(peak, backlog_peak)
        if v[0] and (latest is None or v[3] > latest[3]):
            latest = v
    totals = ListenerTotals(accepts, latency_count, latency_sum, tuple(slots),
                            backlog_max=backlog_max, backlog_peak=peak)
    if latest is not None:
        totals.last_seen_ns = latest[3]
        totals.backlog = latest[36]
        totals.pid = latest[40]
        totals.comm = latest[42].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    return totals


def remote_address(raw: bytes) -> str:
    """The remotes map keeps IPv4 clients IPv4-mapped: show them as IPv4."""
    if raw[:12] == _V4_MAPPED:
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


LISTENERS_MAX = 4096  # listener_stats' max_entries in the object
MAP_BUDGET_BYTES = 64 << 20  # per-CPU values of listener_stats, all CPUs together


def listener_entries(ncpus: int) -> int:
    """listener_stats' size: 4096 listeners, fewer where a value times the CPUs would
    pass the budget (a 128-CPU host: 1598), never under 256."""
    return max(256, min(LISTENERS_MAX, MAP_BUDGET_BYTES // (LISTENER_STATS.size * ncpus)))


# What this module unpacks, by name: struct -> (size, {member: (offset, size)}). Checked
# against the object's BTF before load, so a reordered or resized field in
# bpf/aggregate.bpf.h stops the load with a line naming it instead of misreading counts.
LAYOUTS: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {
    "listener_key": (LISTENER_KEY.size, {
        "cgroup_id": (0, 8), "netns": (8, 4), "family": (12, 2), "lport": (14, 2),
        "laddr": (16, 16)}),
    "listener_stats": (LISTENER_STATS.size, {
        "accepts": (0, 8), "latency_count": (8, 8), "latency_sum_ns": (16, 8),
        "last_seen_ns": (24, 8), "latency_slots": (32, 8 * LATENCY_SLOTS),
        "backlog": (288, 4), "backlog_peak": (292, 4), "backlog_max": (296, 4),
        "peak_epoch": (300, 4), "pid": (304, 4), "comm": (312, TASK_COMM_LEN)}),
    "remote_count_key": (REMOTE_KEY.size, {"listener": (0, LISTENER_KEY.size),
                                           "raddr": (LISTENER_KEY.size, 16)}),
}


def check_layouts(btf: Btf, source: str) -> None:
    """The aggregation structs of the object are the ones this module reads."""
    for name, (size, members) in LAYOUTS.items():
        struct_id = btf.find(name, BTF_KIND_STRUCT)
        if struct_id is None:
            raise TcpacceptError(f"{source}: no struct {name} in its BTF: the BPF object "
                                 "does not match this tcpaccept (rebuild it)")
        found = {m.name: (m.offset, btf.size(m.type_id)) for m in btf.members(struct_id)}
        wrong = [f"{member} {found.get(member)} (want {where})"
                 for member, where in members.items() if found.get(member) != where]
        if btf.size(struct_id) != size or wrong:
            raise TcpacceptError(f"{source}: struct {name} is not what tcpaccept reads: "
                                 f"{', '.join(wrong) or f'size {btf.size(struct_id)}'} "
                                 "(rebuild the BPF object)")


def size_maps(obj: libbpf.BpfObject, remotes: bool, ncpus: Optional[int] = None,
              aggregating: bool = True) -> None:
    """Before load: check the structs and size the aggregation maps for this host and
    mode. listener_stats is preallocated (see bpf/aggregate.bpf.h): 1 entry when nothing
    aggregates."""
    check_layouts(Btf.of_object(obj), os.path.basename(obj.path))
    entries = listener_entries(ncpus or possible_cpus()) if aggregating else 1
    obj.map("listener_stats").set_max_entries(entries)
    if not remotes:  # only -s reads the (preallocated) remotes LRU
        obj.map("remote_counts").set_max_entries(1)


class MapSource(Protocol):
    """What the reader needs of the tracer."""

    def bpf_map(self, name: str) -> libbpf.Map: ...


_c = ctypes
_lib: Optional[ctypes.CDLL] = None


def _libbpf() -> ctypes.CDLL:
    """Our own handle on libbpf.so.1 for the map-walking calls libbpf.py does not bind."""
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(libbpf.LIBBPF_SONAME, use_errno=True)
        for name, argtypes in (
                ("bpf_map_get_next_key", [_c.c_int, _c.c_void_p, _c.c_void_p]),
                ("bpf_map_lookup_elem", [_c.c_int, _c.c_void_p, _c.c_void_p]),
                ("bpf_map_delete_elem", [_c.c_int, _c.c_void_p]),
                ("bpf_map_update_elem", [_c.c_int, _c.c_void_p, _c.c_void_p, _c.c_uint64])):
            fn = getattr(lib, name)
            fn.restype = _c.c_int
            fn.argtypes = argtypes
        _lib = lib
    return _lib


def _map_sizes(fd: int) -> tuple[int, int, int]:
    """(key_size, value_size, max_entries) from the kernel's fdinfo of the map."""
    with open(f"/proc/self/fdinfo/{fd}") as fdinfo:
        info = dict(line.split(":", 1) for line in fdinfo if ":" in line)
    return int(info["key_size"]), int(info["value_size"]), int(info["max_entries"])


def possible_cpus() -> int:
    """Per-CPU map values have one slot per possible CPU (not just online ones)."""
    with open("/sys/devices/system/cpu/possible") as f:
        spans = f.read().strip().split(",")
    return max(int(span.split("-")[-1]) for span in spans) + 1


class BpfHash:
    """Iteration, lookup and delete on one map by fd; per-CPU values split per CPU."""

    def __init__(self, bpf_map: libbpf.Map, key: struct.Struct, value_size: int,
                 per_cpu: bool, ncpus: int) -> None:
        self.name = bpf_map.name
        self.fd = bpf_map.fd
        key_size, map_value_size, self.max_entries = _map_sizes(self.fd)
        if key_size != key.size or map_value_size != value_size:
            raise TcpacceptError(
                f"BPF map {self.name}: key/value {key_size}/{map_value_size} bytes, this "
                f"tcpaccept reads {key.size}/{value_size}: the BPF object does not match "
                "(rebuild it)")
        self.key_size = key.size
        self.value_size = value_size
        self.stride = (value_size + 7) & ~7  # the kernel rounds per-CPU values up to 8
        self.ncpus = ncpus if per_cpu else 1

    def keys(self) -> Iterator[bytes]:
        """Every key present now. A key deleted under us restarts nothing: the kernel then
        hands out the first key again, so this stops after max_entries keys at most."""
        lib = _libbpf()
        prev, key = None, ctypes.create_string_buffer(self.key_size)
        for _ in range(self.max_entries + 1):
            if lib.bpf_map_get_next_key(self.fd, prev, key) < 0:
                return
            raw = key.raw
            yield raw
            prev = ctypes.create_string_buffer(raw, self.key_size)

    def lookup(self, key: bytes) -> Optional[list[bytes]]:
        """The value, one bytes per CPU (one in all for a plain map); None if gone."""
        # A buffer per call: the summary (main thread) and the scrape thread may both read.
        value = ctypes.create_string_buffer(self.stride * self.ncpus)
        if _libbpf().bpf_map_lookup_elem(self.fd, key, value) < 0:
            return None
        raw = value.raw
        return [raw[i * self.stride:i * self.stride + self.value_size]
                for i in range(self.ncpus)]

    def items(self) -> Iterator[tuple[bytes, list[bytes]]]:
        seen: set[bytes] = set()
        for key in self.keys():
            if key in seen:  # restarted after a concurrent delete
                return
            seen.add(key)
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def delete(self, key: bytes) -> None:
        _libbpf().bpf_map_delete_elem(self.fd, key)

    def update(self, key: bytes, value: bytes) -> None:
        if _libbpf().bpf_map_update_elem(self.fd, key, value, 0) < 0:
            raise TcpacceptError(f"BPF map {self.name}: update failed: "
                                 f"{libbpf.strerror(ctypes.get_errno())}")


class AggregateReader:
    """The aggregation maps of one started tracer."""

    def __init__(self, source: MapSource, ncpus: Optional[int] = None) -> None:
        ncpus = ncpus or possible_cpus()
        self.listeners = BpfHash(source.bpf_map("listener_stats"), LISTENER_KEY,
                                 LISTENER_STATS.size, per_cpu=True, ncpus=ncpus)
        self.remotes = BpfHash(source.bpf_map("remote_counts"), REMOTE_KEY, COUNTER.size,
                               per_cpu=False, ncpus=ncpus)
        self.counters = BpfHash(source.bpf_map("aggregate_counters"), struct.Struct("<I"),
                                COUNTER.size, per_cpu=True, ncpus=ncpus)
        self.epoch_map = BpfHash(source.bpf_map("aggregate_epoch"), struct.Struct("<I"), 4,
                                 per_cpu=False, ncpus=ncpus)
        self.epoch = 0

    def read_listeners(self, peak_epoch: Optional[int] = None
                       ) -> dict[ListenerKey, ListenerTotals]:
        out = {}
        for raw_key, per_cpu in self.listeners.items():
            totals = merge_cpus([LISTENER_STATS.unpack(v) for v in per_cpu], peak_epoch)
            out[ListenerKey.unpack(raw_key)] = totals
        return out

    def expire(self, listeners: dict[ListenerKey, ListenerTotals], now_ns: int,
               ttl_ns: int) -> list[ListenerKey]:
        """Delete the entries of listeners idle for ttl_ns (their counters restart from 0 if
        they accept again); returns the keys deleted, which callers drop from their dicts."""
        gone = []
        for key, totals in listeners.items():
            if now_ns - totals.last_seen_ns <= ttl_ns:
                continue
            raw = _pack_key(key)
            # Read again right before the delete: an accept since the walk keeps the entry
            # (what remains is the few-microsecond window between this read and the delete).
            fresh = self.listeners.lookup(raw)
            if fresh is not None and merge_cpus(
                    [LISTENER_STATS.unpack(v) for v in fresh]).last_seen_ns != totals.last_seen_ns:
                continue
            self.listeners.delete(raw)
            gone.append(key)
        return gone

    def read_remotes(self) -> dict[tuple[ListenerKey, str], int]:
        out: dict[tuple[ListenerKey, str], int] = {}
        for raw_key, (value,) in self.remotes.items():
            listener, raddr = REMOTE_KEY.unpack(raw_key)
            out[(ListenerKey.unpack(listener), remote_address(raddr))] = \
                COUNTER.unpack(value)[0]
        return out

    def counter(self, index: int) -> int:
        per_cpu = self.counters.lookup(struct.pack("<I", index)) or []
        return sum(COUNTER.unpack(v)[0] for v in per_cpu)

    def listeners_overflow(self) -> int:
        """Accepts the kernel could not count: listener_stats was full."""
        return self.counter(AGG_LISTENERS_FULL)

    def remotes_evicted(self, entries_now: int) -> int:
        """How many remotes the LRU pushed out: every insert not present any more (user
        space never deletes from it)."""
        return max(0, self.counter(AGG_REMOTE_INSERTS) - entries_now)

    def next_epoch(self) -> int:
        """Start a new summary interval for the backlog peaks; returns the one that ended."""
        ended, self.epoch = self.epoch, self.epoch + 1
        self.epoch_map.update(struct.pack("<I", 0), struct.pack("<I", self.epoch))
        return ended


def _pack_key(key: ListenerKey) -> bytes:
    if key.family == 4:
        laddr = ipaddress.IPv4Address(key.laddr).packed.ljust(16, b"\0")
        family = AF_INET
    else:
        laddr, family = ipaddress.IPv6Address(key.laddr).packed, AF_INET6
    return LISTENER_KEY.pack(key.cgroup_id, key.netns, family, key.lport, laddr)


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
