"""Flags that parse but would do nothing in the chosen mode, and a --host-root that holds
nothing to read: said, in one line, before anything is loaded.

A flag that is silently ignored is a lie about what the run shows (`-q` alone printed
nothing and said nothing; `--metrics-labels` without `--metrics` shaped no series). So
each flag whose only effect is on a mode is refused outside it, like the TLS flags.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

from .containers.runtimes import CONTAINERD_TASK_DIRS, DOCKER_CONTAINERS, STORAGE_DIRS

# What --host-root is for: the host's /proc, its cgroup tree, the runtimes' state.
HOST_ROOT_PATHS = ("proc/1", "sys/fs/cgroup", *CONTAINERD_TASK_DIRS, DOCKER_CONTAINERS,
                   *STORAGE_DIRS)


def _mode(args: argparse.Namespace) -> str:
    """Which output shows: the summary tables, metrics only, JSON lines or text lines."""
    if args.summary:
        return "-s"
    if args.quiet:
        return "-q"
    return "-j" if args.json else "text"


# flag (as shown), the argparse dest, the modes it does something in.
_MODE_FLAGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("-t/--timestamp", "timestamp", ("text",)),  # JSON has its own "time"
    ("-T/--time", "time", ("text",)),
    ("-x/--extended", "extended", ("text", "-j")),  # JSON: the cgroup path
    ("-l/--latency", "latency", ("text",)),  # JSON always has queue_latency_us
    ("--no-unmap", "unmap", ("text", "-j")),
    ("--drops", "drops", ("text", "-j", "-q")),  # -s shows drops anyway
)

_WHY = {
    "-s": "with -s/--summary (the tables do not show it)",
    "-q": "with -q/--quiet (no accept lines are printed)",
    "-j": "with -j/--json (JSON lines have a fixed set of keys: see tcpaccept(8))",
}


def idle_flag_error(args: argparse.Namespace) -> Optional[str]:
    """The one-line reason to refuse the flags, or None when each of them does something."""
    if args.metrics_labels is not None and not args.metrics:
        return "--metrics-labels needs --metrics [ADDR:]PORT (it shapes the metrics' series)"
    if args.quiet and not (args.metrics or args.drops):
        if args.summary:
            return "-q/--quiet does nothing with -s/--summary (the tables are printed anyway)"
        return ("-q/--quiet needs --metrics [ADDR:]PORT (or --drops): alone it prints "
                "nothing at all")
    mode = _mode(args)
    for flag, dest, modes in _MODE_FLAGS:
        given = getattr(args, dest) is False if dest == "unmap" else bool(getattr(args, dest))
        if given and mode not in modes:
            return f"{flag} does nothing {_WHY[mode]}"
    return None


def host_root_warning(host_root: str) -> Optional[str]:
    """One warning line when --host-root holds none of what it is read for (a mistyped or
    unmounted directory: container names would silently be null)."""
    if os.path.realpath(host_root) == "/":
        return None
    if any(os.path.exists(os.path.join(host_root, path)) for path in HOST_ROOT_PATHS):
        return None
    return (f"--host-root {host_root} holds none of {', '.join(HOST_ROOT_PATHS)}: "
            "container ids and names will be missing (is the host's / mounted there?)")
