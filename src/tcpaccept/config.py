"""What to trace (filters, attach method) and how to show it. Built by cli.py, no BPF here."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
PROBE_CHOICES = ("auto", "fexit", "kprobe", "tracepoint")


@dataclass(frozen=True)
class Config:
    """Tracing settings. Every filter here runs in the kernel."""

    pids: frozenset[int] = frozenset()
    lports: frozenset[int] = frozenset()
    uid: Optional[int] = None
    comm: Optional[str] = None
    netns: Optional[int] = None
    cgroup: Optional[str] = None  # cgroup v2 directory, descendants included
    cgroupmap: Optional[str] = None  # bcc-style pinned hash of cgroup ids
    mntnsmap: Optional[str] = None  # bcc-style pinned hash of mount namespace inodes
    remotes: tuple[IPNetwork, ...] = ()
    family: Optional[int] = None  # 4 or 6; IPv4-mapped clients count as 4
    probe: str = "auto"
    # Stamp children as they become ESTABLISHED (one more hook on every TCP state change),
    # so that accepts carry their accept-queue wait.
    queue_latency: bool = True
    ring_buffer_bytes: int = 4 << 20
    # Tracepoint method: also hook io_uring completions (IORING_OP_ACCEPT), where supported.
    io_uring: bool = True


@dataclass(frozen=True)
class OutputConfig:
    """How events are shown; none of it changes what the kernel reports."""

    json: bool = False
    relative_time: bool = False  # bcc -t: TIME(s) since tracing began
    clock_time: bool = False  # bcc -T: with -t, keep the HH:MM:SS column as well
    extended: bool = False
    latency: bool = False
    unmap_ipv4: bool = True
    count: Optional[int] = None
    duration: Optional[float] = None
    verbose: bool = False
    summary_interval: Optional[float] = None
    drops: bool = False
    metrics: Optional[tuple[str, int]] = None  # (address, port) for Prometheus
    metrics_tls_cert: Optional[str] = None  # PEM files: serve the metrics over HTTPS
    metrics_tls_key: Optional[str] = None
    quiet: bool = False  # no accept lines (with metrics: the always-on agent)
