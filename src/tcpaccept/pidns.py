"""Which PID namespace tcpaccept reports PIDs in.

The PIDs a user passes to -p, sees in ps and finds as drop-row owners all come from /proc,
so the tracer shows PIDs as the namespace of its /proc numbers them: the namespace of that
/proc's pid 1. On a host (the initial namespace) nothing changes; in a container with its
own PID namespace and /proc, the kernel program translates (tcpaccept.bpf.c, shown_pid_tgid).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

# The initial PID namespace's inode number (PROC_PID_INIT_INO, include/linux/proc_ns.h).
INITIAL_PID_NS_INO = 0xEFFFFFFC


@dataclass(frozen=True)
class PidNamespace:
    """A PID namespace as bpf_get_ns_current_pid_tgid wants it named."""

    dev: int  # nsfs's device as the kernel encodes dev_t (MKDEV), not as stat(2) does
    ino: int

    def __str__(self) -> str:
        return f"pid:[{self.ino}]"  # as readlink /proc/PID/ns/pid shows it


def kernel_dev(st_dev: int) -> int:
    """stat(2) gives the user-space encoding of dev_t; the helper compares the kernel's
    (major << 20 | minor). They differ as soon as the minor number exceeds 255."""
    return os.major(st_dev) << 20 | os.minor(st_dev)


def shown_pid_namespace(proc: str = "/proc") -> Optional[PidNamespace]:
    """The namespace /proc shows, or None when it is the initial one (no translation).
    /proc/1 may be hidden (hidepid): then the tracer's own namespace."""
    for link in (f"{proc}/1/ns/pid", f"{proc}/self/ns/pid"):
        try:
            st = os.stat(link)
        except OSError:
            continue
        if st.st_ino == INITIAL_PID_NS_INO:
            return None
        return PidNamespace(kernel_dev(st.st_dev), st.st_ino)
    return None  # no /proc to speak of: PIDs as the kernel's initial namespace numbers them


def pid_namespace_notice(namespace: PidNamespace) -> str:
    """The line that says, at start, which namespace's PIDs the output holds."""
    return (f"PIDs are those of pid namespace {namespace} (this /proc's); accepts by "
            "processes outside it have no PID here and are not shown")
