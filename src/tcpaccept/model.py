"""What flows from the run loop to the sinks: plain, immutable model objects.

The run loop decodes each kernel record once into an ``Accept``; the drop monitor yields
``Drop``; lost events (ring buffer full, output stalled) travel as ``Lost``. Sinks never see
raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Union


@dataclass(frozen=True)
class Container:
    """Who a cgroup belongs to, as the container runtime on the node named it."""

    id: str  # full 64-hex container id
    name: Optional[str] = None  # container name (Kubernetes: the container's name in its pod)
    pod: Optional[str] = None  # Kubernetes pod name
    namespace: Optional[str] = None  # Kubernetes namespace
    runtime: Optional[str] = None  # docker, podman, containerd, cri-o, kubernetes

    @property
    def short(self) -> str:
        """The name, else the 12-character id (what `docker ps` shows)."""
        return self.name or self.id[:12]


class Accept(NamedTuple):
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
    container: Optional[Container] = None  # set when container resolution is on


@dataclass(frozen=True)
class Drop:
    """Connections one listener refused (accept queue full) since its previous report."""

    laddr: str
    lport: int
    family: int
    pid: Optional[int]
    comm: Optional[str]
    backlog: int  # accept queue length when sampled
    backlog_max: int  # listen() backlog as clamped by the kernel (somaxconn)
    dropped: int  # drops since the previous report for this listener
    inode: int
    netns: int = 0  # network namespace inode; 0 when unknown
    time_ns: int = 0  # wall clock of the sample that saw the drops
    container: Optional[Container] = None


@dataclass(frozen=True)
class Lost:
    """Events that never reached the output, and why."""

    count: int
    reason: str = "ring buffer"  # "ring buffer" (kernel side) or "output stalled"


Item = Union[Accept, Drop, Lost]
