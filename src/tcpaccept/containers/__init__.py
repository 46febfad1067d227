"""Container identity of events: cgroup id -> cgroup path -> container id -> names.

``ContainerResolver.resolve(cgroup_id, pid)`` names the container of an accept or drop;
``ContainerResolver.cgroup_ids_for(Selector)`` gives the cgroup ids a container filter
matches. Everything is read from files on the node (the cgroup2 tree, /proc, the runtimes'
state files); nothing talks to an API server or a runtime socket.
"""

from __future__ import annotations

import importlib
from typing import Any

from .selector import Selector, SelectorError

# Everything but the selector is imported on first use: `--container` parsing needs only
# the selector, and a run that prints no container names never reads the runtimes' state
# (resolver, paths and their regexes are ~10% of a plain start's imports).
_LAZY = {
    "CgroupTree": "cgroup_tree", "cgroup2_mount": "cgroup_tree",
    "cgroup2_root_under": "cgroup_tree", "proc_cgroup_path": "cgroup_tree",
    "PathMatch": "paths", "container_from_path": "paths",
    "ContainerResolver": "resolver", "RuntimeState": "runtimes",
}

__all__ = [
    "CgroupTree", "ContainerResolver", "PathMatch", "RuntimeState", "Selector",
    "SelectorError", "cgroup2_mount", "cgroup2_root_under", "container_from_path",
    "proc_cgroup_path",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
