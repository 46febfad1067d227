"""The accept event: the kernel record (mirrors bpf/tcpaccept.h) and its decoding."""

from __future__ import annotations

import socket
import struct
import time
from typing import NamedTuple, Optional

# struct accept_event, little-endian, no padding: keep in step with bpf/tcpaccept.h.
RECORD = struct.Struct("<QQQIIIIiiIIHHHBx16s16s16s")
assert RECORD.size == 112

PROBE_NAMES = {1: "tracepoint", 2: "kprobe", 3: "fexit"}
_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


class Event(NamedTuple):
    """One accept, decoded. Addresses are printable strings; ports in host order."""

    time_ns: int  # wall clock, ns since the epoch
    pid: int
    tid: int
    uid: int
    comm: str
    family: int  # 4 or 6, as shown (an unmapped IPv4-mapped client is 4)
    raddr: str
    rport: int
    laddr: str
    lport: int
    backlog: int
    backlog_max: int
    fd: int  # -1 when the attach method cannot know it
    listen_fd: int
    netns: int
    cgroup_id: int
    queue_latency_ns: Optional[int]
    probe: str


class Decoder:
    """Turns raw records into Events; caches the strings that repeat (addresses, comms)."""

    def __init__(self, unmap_ipv4: bool = True, boot_to_wall_ns: Optional[int] = None) -> None:
        self.unmap_ipv4 = unmap_ipv4
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC: one offset converts it to wall time.
        self.boot_to_wall_ns = (
            boot_to_wall_ns if boot_to_wall_ns is not None
            else time.time_ns() - time.monotonic_ns()
        )
        self._addr_cache: dict[tuple[int, bytes], tuple[int, str]] = {}
        self._comm_cache: dict[bytes, str] = {}

    def address(self, family: int, raw: bytes) -> tuple[int, str]:
        """(shown family, printable address), IPv4-mapped IPv6 unmapped unless disabled."""
        key = (family, raw)
        hit = self._addr_cache.get(key)
        if hit is not None:
            return hit
        if family == socket.AF_INET:
            shown = (4, socket.inet_ntop(socket.AF_INET, raw[:4]))
        elif self.unmap_ipv4 and raw.startswith(_V4_MAPPED_PREFIX):
            shown = (4, socket.inet_ntop(socket.AF_INET, raw[12:]))
        else:
            shown = (6, socket.inet_ntop(socket.AF_INET6, raw))
        if len(self._addr_cache) > 4096:  # bounded: a scan from many clients must not grow it
            self._addr_cache.clear()
        self._addr_cache[key] = shown
        return shown

    def comm(self, raw: bytes) -> str:
        name = self._comm_cache.get(raw)
        if name is None:
            name = raw.split(b"\0", 1)[0].decode(errors="replace")
            if len(self._comm_cache) > 4096:
                self._comm_cache.clear()
            self._comm_cache[raw] = name
        return name

    def decode(self, record: bytes) -> Event:
        (ts_ns, cgroup_id, qlat_ns, pid, tid, uid, netns, fd, listen_fd, backlog, backlog_max,
         family, lport, rport, probe, laddr, raddr, comm) = RECORD.unpack_from(record)
        shown_family, raddr_text = self.address(family, raddr)
        _, laddr_text = self.address(family, laddr)
        return Event(
            ts_ns + self.boot_to_wall_ns, pid, tid, uid, self.comm(comm), shown_family,
            raddr_text, rport, laddr_text, lport, backlog, backlog_max, fd, listen_fd, netns,
            cgroup_id, qlat_ns or None, PROBE_NAMES.get(probe, "unknown"),
        )


def encode(event_fields: dict) -> bytes:
    """Build a raw record (for unit tests and the pipeline benchmark)."""
    f = event_fields
    return RECORD.pack(
        f.get("ts_ns", 0), f.get("cgroup_id", 0), f.get("queue_latency_ns", 0), f["pid"],
        f.get("tid", f["pid"]), f.get("uid", 0), f.get("netns", 0), f.get("fd", -1),
        f.get("listen_fd", -1), f.get("backlog", 0), f.get("backlog_max", 0), f["family"],
        f["lport"], f["rport"], f.get("probe", 1), f["laddr"], f["raddr"],
        f["comm"].encode()[:16],
    )
