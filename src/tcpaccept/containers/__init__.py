"""Container identity of events: cgroup id -> cgroup path -> container id -> names.

``ContainerResolver.resolve(cgroup_id, pid)`` names the container of an accept or drop;
``ContainerResolver.cgroup_ids_for(Selector)`` gives the cgroup ids a container filter
matches. Everything is read from files on the node (the cgroup2 tree, /proc, the runtimes'
state files); nothing talks to an API server or a runtime socket.
"""

from __future__ import annotations

from .cgroup_tree import CgroupTree, cgroup2_mount, cgroup2_root_under, proc_cgroup_path
from .paths import PathMatch, container_from_path
from .resolver import ContainerResolver
from .runtimes import RuntimeState
from .selector import Selector, SelectorError

__all__ = [
    "CgroupTree", "ContainerResolver", "PathMatch", "RuntimeState", "Selector",
    "SelectorError", "cgroup2_mount", "cgroup2_root_under", "container_from_path",
    "proc_cgroup_path",
]
