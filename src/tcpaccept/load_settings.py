"""What user space writes into the object before load: the programs' load-time settings
(.rodata, by name) and the keys of the filter maps."""

from __future__ import annotations

import struct
from typing import Optional

from . import sizing
from .btf import DataSection
from .config import Config, IPNetwork
from .event import RecordLayout
from .pidns import PidNamespace


def configure(rodata: DataSection, config: Config, layout: RecordLayout,
              saved_regs: bool, ring_bytes: int, cpus: int = 1,
              pid_namespace: Optional[PidNamespace] = None) -> None:
    """Write the load-time settings, each by its name in the program's .rodata;
    `ring_bytes` is the size the ring is created with (not always --ring-buffer's)."""
    rodata.set("filter_pid", bool(config.pids))
    rodata.set("filter_lport", bool(config.lports))
    rodata.set("filter_uid", config.uid is not None)
    rodata.set("target_uid", config.uid or 0)
    rodata.set("filter_comm", config.comm is not None)
    comm = (config.comm or "").encode()[:layout.comm_len - 1]
    rodata.set("target_comm", comm.ljust(layout.comm_len, b"\0"))
    rodata.set("filter_netns", config.netns is not None)
    rodata.set("target_netns", config.netns or 0)
    rodata.set("filter_cgroup", bool(config.cgroup))
    rodata.set("filter_cgroupmap", bool(config.cgroupmap))
    rodata.set("filter_mntnsmap", bool(config.mntnsmap))
    rodata.set("filter_containers", bool(config.containers))
    rodata.set("filter_remote", bool(config.remotes))
    rodata.set("filter_family", bool(config.family))
    rodata.set("target_family", config.family or 0)
    rodata.set("saved_regs", saved_regs)
    rodata.set("queue_latency", config.queue_latency)
    # Each CPU wakes user space after its share of an eighth of the ring (sizing.py says
    # why per CPU); user space polls every 50 ms anyway.
    slots = ring_bytes // layout.ring_slot_bytes
    rodata.set("wakeup_batch", sizing.wakeup_batch(slots, cpus))
    rodata.set("in_pid_namespace", pid_namespace is not None)
    if pid_namespace is not None:
        rodata.set("pidns_dev", pid_namespace.dev, size=8)
        rodata.set("pidns_ino", pid_namespace.ino, size=8)


def remote_key(network: IPNetwork) -> bytes:
    """LPM key: prefix length + 16 bytes; IPv4 ranges as IPv4-mapped IPv6 (::ffff:0:0/96)."""
    if network.version == 4:
        addr = b"\0" * 10 + b"\xff\xff" + network.network_address.packed
        return struct.pack("<I", 96 + network.prefixlen) + addr
    return struct.pack("<I", network.prefixlen) + network.network_address.packed
