"""What runs with fewer privileges than root, and the one-line warning for what does not.

Accepts need CAP_BPF + CAP_PERFMON only (preflight.check_privileges; without readable
tracefs ids the tracepoint method attaches at sys_exit, probes.py). The extras read other
users' /proc entries and root-only directories; without the capability they degrade (no
owner, no container name), and this module says so once at start instead of leaving a
column silently empty. Measured as uid 65534 on kernel 6.18 (tests/kernel/test_privileges.py).
"""

from __future__ import annotations

import os
from typing import Optional

from .containers.runtimes import CONTAINERD_TASK_DIRS, DOCKER_CONTAINERS, STORAGE_DIRS
from .preflight import effective_caps

CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYS_ADMIN = 2, 19, 21


def _has(cap: int) -> bool:
    return bool(effective_caps() >> cap & 1)


def drops_warning() -> Optional[str]:
    """--drops names a dropping listener's owner from /proc/PID/fd: listing another
    user's fd directory (0500) needs CAP_DAC_READ_SEARCH, reading its links a ptrace
    access check (CAP_SYS_PTRACE; also for root's own processes when they hold capabilities
    the tracer lacks). Other network namespaces are found through /proc/PID/ns/net (ptrace
    check) and entered with setns (CAP_SYS_ADMIN). Measured as uid 65534 and uid 0."""
    owners = [CAP_SYS_PTRACE] if os.geteuid() == 0 else [CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]
    others = [CAP_SYS_PTRACE, CAP_SYS_ADMIN]
    parts = []
    if not all(_has(cap) for cap in owners):
        parts.append(f"owners (PID, COMM) need {_names(owners)}: shown only for processes "
                     "this user can trace")
    if not all(_has(cap) for cap in others):
        parts.append(f"listeners in other network namespaces need {_names(others)}: only "
                     "this one is watched")
    return f"listener drops (--drops, -s): {'; '.join(parts)}" if parts else None


def _names(caps: list[int]) -> str:
    names = {CAP_DAC_READ_SEARCH: "CAP_DAC_READ_SEARCH", CAP_SYS_PTRACE: "CAP_SYS_PTRACE",
             CAP_SYS_ADMIN: "CAP_SYS_ADMIN"}
    return " and ".join(names[cap] for cap in caps)


def container_names_warning(host_root: str = "/") -> Optional[str]:
    """Container ids come from /proc/PID/cgroup and the cgroup tree (readable by anyone);
    names come from the runtimes' state directories, root-only (0700) on Debian."""
    if os.geteuid() == 0 or _has(CAP_DAC_READ_SEARCH):
        return None  # uid 0 owns them (the DaemonSet: root with BPF + PERFMON only)
    dirs = CONTAINERD_TASK_DIRS + (DOCKER_CONTAINERS,) + STORAGE_DIRS
    unreadable = [path for path in (os.path.join(host_root, d) for d in dirs)
                  if _unreadable(path)]
    if not unreadable:
        return None
    return (f"container names: {', '.join(unreadable)} not readable by uid {os.geteuid()} "
            "(root-only): containers are shown by id only; CAP_DAC_READ_SEARCH (or root) "
            "reads them")


def _unreadable(path: str) -> bool:
    """There (as far as can be told) but not listable: a root-only directory on the way
    makes stat fail with EACCES; an absent runtime is no reason to warn."""
    try:
        os.stat(path)
    except PermissionError:
        return True
    except OSError:
        return False
    return not os.access(path, os.R_OK | os.X_OK)
