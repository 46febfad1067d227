"""What to trace (filters, attach method) and how to show it. Built by cli.py, no BPF here."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Union

from .containers.selector import Selector

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
PROBE_CHOICES = ("auto", "fexit", "kprobe", "tracepoint")
# Prometheus labels a listener's series may carry (--metrics-labels), and the default. Each
# is bounded by the listeners on the node; comm is opt-in because any process can rename
# itself as often as it likes (one series per name).
METRICS_LABELS = ("laddr", "lport", "netns", "container", "namespace", "pod", "comm")
DEFAULT_METRICS_LABELS = ("laddr", "lport", "netns", "container", "namespace", "pod")


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
    # --container/--pod/--k8s-namespace: the kernel lets through the cgroup ids user space
    # resolves from these, re-resolved every second.
    containers: Selector = Selector()
    host_root: str = "/"  # where the host's / is seen (/host when run in a container)


@dataclass(frozen=True)
class OutputConfig:
    """How events are shown. None of it filters what the kernel reports; what the kernel
    and the session do for these flags (aggregation, records, drops, containers) is
    derived from them once, in plan.RunPlan."""

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
    metrics_labels: tuple[str, ...] = DEFAULT_METRICS_LABELS
