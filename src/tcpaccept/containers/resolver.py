"""cgroup id (+ pid) -> Container, cached, for every event the tracer decodes.

Costs (bench/container_resolve.py): a cached lookup is a dict hit; the first lookup of a
cgroup finds its path with one open_by_handle_at (handles.py; a rate-limited walk where
that is refused) and the first lookup of a container reads one or two small JSON files.
So: one entry per cgroup id (containers and host cgroups alike: the negative cache; ids
of cgroups already gone are remembered too), one per container id, names re-read at most
once per ``name_retry_s`` during ``name_wait_s`` after the container was first seen
(runtimes write them before the container starts; plain containerd never does), entries of
removed cgroups kept for ``ttl_gone_s`` so events that were queued before the removal
still name their container. Every ``HOUSEKEEPING_CALLS`` lookups the resolver checks
whether the tree was walked in the last ``housekeeping_s``, and walks it if not: that is
how removed cgroups are noticed, and forgotten after the TTL, when no filter walks.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

from ..model import Container
from .cgroup_tree import ROOT_CGROUP_ID, CgroupTree, cgroup2_root_under, proc_cgroup_path
from .handles import CgroupHandles, Unavailable
from .paths import PathMatch, container_from_path
from .runtimes import RuntimeState
from .selector import Selector


class _Host:
    """Marks a cgroup known to belong to no container (the negative cache)."""


_HOST = _Host()
HOUSEKEEPING_CALLS = 4096  # lookups between two looks at the clock for housekeeping
DEAD_IDS_MAX = 65536  # ids of cgroups that were gone when first seen, remembered
_Resolved = Union[Container, _Host]


@dataclass
class _Named:
    container: Container
    read_at: float
    runtime_hint: Optional[str]
    first_seen: float

    def awaits_name(self, now: float, wait_s: float) -> bool:
        return self.container.name is None and now - self.first_seen < wait_s


class ContainerResolver:
    """Names the container of a cgroup id as the kernel reports it (cgroup v2 inode).

    ``host_root`` is where the host's / is visible (``/host`` when the tool runs in a
    container with the host's directories mounted there); ``cgroup_root`` overrides where
    the cgroup2 tree is found (default: the host's cgroup2 mount, under host_root)."""

    def __init__(self, host_root: str = "/", ttl_gone_s: float = 600.0, *,
                 cgroup_root: Optional[str] = None, min_walk_interval_s: float = 0.5,
                 name_retry_s: float = 1.0, name_wait_s: float = 10.0, pid_ttl_s: float = 5.0,
                 housekeeping_s: float = 60.0, file_handles: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host_root = host_root
        root = cgroup_root if cgroup_root is not None else cgroup2_root_under(host_root)
        self.cgroups = CgroupTree(root, ttl_gone_s, min_walk_interval_s, clock)
        self.handles: Optional[CgroupHandles] = None
        if file_handles and root is not None:
            with contextlib.suppress(Unavailable):  # then a miss walks the tree instead
                self.handles = CgroupHandles(root)
        self._dead: set[int] = set()
        self._watching: Optional[bool] = None  # inotify on the tree, once a filter asks
        self._selected: dict[Selector, tuple[int, frozenset[int]]] = {}
        self._housekeeping_s = housekeeping_s
        self._calls = 0
        self.state = RuntimeState(host_root)
        host_proc = os.path.join(host_root, "proc")
        self._proc_root = host_proc if os.path.isdir(os.path.join(host_proc, "1")) else "/proc"
        self._clock = clock
        self._name_retry_s = name_retry_s
        self._name_wait_s = name_wait_s
        self._pid_ttl_s = pid_ttl_s
        self._by_cgroup: dict[int, _Resolved] = {}
        self._by_container: dict[str, _Named] = {}
        self._by_pid: dict[int, tuple[Optional[Container], float]] = {}
        self.state_reads = 0  # runtime state lookups made (for tests and the benchmark)

    # -- the event path -------------------------------------------------------------
    def resolve(self, cgroup_id: int, pid: Optional[int] = None) -> Optional[Container]:
        """The container of the cgroup, or None (a host process, or not known). The pid
        is used where the id cannot say: the root cgroup's id (a cgroup v1-only host, or
        a process left in the v2 root of a hybrid host) or an id whose cgroup is not found
        (gone before its first event; without file handles, made since the last walk)."""
        self._calls += 1
        if self._calls % HOUSEKEEPING_CALLS == 0 and \
                self.cgroups.seconds_since_walk() >= self._housekeeping_s:
            self.refresh()
        if cgroup_id != ROOT_CGROUP_ID:
            resolved = self._by_cgroup.get(cgroup_id)
            if resolved is None:
                resolved = self._resolve_new(cgroup_id)
            if isinstance(resolved, Container):
                if resolved.name is None:
                    resolved = self._renamed(cgroup_id, resolved)
                return resolved
            if resolved is _HOST:
                return None
        return self._resolve_pid(pid) if pid is not None else None

    def cgroup_path(self, cgroup_id: int) -> Optional[str]:
        """The cgroup's path relative to the cgroup2 root (for a CGROUP column)."""
        path = self.cgroups.path(cgroup_id)
        if path is not None or cgroup_id in self._dead:
            return path
        if self.handles is not None:
            try:
                path = self.handles.path(cgroup_id)
            except Unavailable:
                self.handles.close()
                self.handles = None
            else:
                if path is None:  # gone before we looked: it will never come back
                    if len(self._dead) >= DEAD_IDS_MAX:
                        self._dead.clear()
                    self._dead.add(cgroup_id)
                else:
                    self.cgroups.learn(cgroup_id, path)
                return path
        if self.cgroups.walk_due():
            self.refresh()
            path = self.cgroups.path(cgroup_id)
        return path

    def _resolve_new(self, cgroup_id: int) -> Optional[_Resolved]:
        path = self.cgroup_path(cgroup_id)
        if path is None:
            return None  # gone, or (without file handles) not walked yet
        match = container_from_path(path)
        resolved: _Resolved = self._container(match) if match else _HOST
        self._by_cgroup[cgroup_id] = resolved
        return resolved

    def _container(self, match: PathMatch) -> Container:
        named = self._by_container.get(match.container_id)
        if named is None:
            now = self._clock()
            named = _Named(self._read_state(match.container_id, match.runtime), now,
                           match.runtime, now)
            self._by_container[match.container_id] = named
        return named.container

    def _read_state(self, container_id: str, runtime_hint: Optional[str]) -> Container:
        self.state_reads += 1
        return self.state.lookup(container_id, runtime_hint)

    def _renamed(self, cgroup_id: int, container: Container) -> Container:
        """A container seen before its runtime wrote its name: look again, at most once
        per name_retry_s (plain containerd containers never have one)."""
        named = self._by_container.get(container.id)
        if named is None:
            return container
        now = self._clock()
        if named.awaits_name(now, self._name_wait_s) and \
                now - named.read_at >= self._name_retry_s:
            named.container = self._read_state(container.id, named.runtime_hint)
            named.read_at = now
        self._by_cgroup[cgroup_id] = named.container
        return named.container

    def for_pid(self, pid: int) -> Optional[Container]:
        """The container of a process (a drop's listener owner), from /proc/PID/cgroup."""
        return self._resolve_pid(pid)

    def _resolve_pid(self, pid: int) -> Optional[Container]:
        now = self._clock()
        cached = self._by_pid.get(pid)
        if cached is not None and now - cached[1] < self._pid_ttl_s:
            return cached[0]
        if len(self._by_pid) > 65536:  # pids churn; keep the cache bounded
            self._by_pid.clear()
        path = proc_cgroup_path(self._proc_root, pid)
        match = container_from_path(path) if path else None
        container = self._container(match) if match else None
        self._by_pid[pid] = (container, now)
        return container

    def refresh(self) -> None:
        """Walk the cgroup tree now: notice removed cgroups, forget those gone for longer
        than the TTL (with their cache entries), learn new ones."""
        forgotten = self.cgroups.walk()
        if not forgotten:
            return
        for cgroup_id in forgotten:
            self._by_cgroup.pop(cgroup_id, None)
        referenced = {c.id for c in self._by_cgroup.values() if isinstance(c, Container)}
        referenced.update(c.id for c, _at in self._by_pid.values() if c is not None)
        for container_id in list(self._by_container):
            if container_id not in referenced:
                del self._by_container[container_id]

    # -- filters --------------------------------------------------------------------
    def cgroup_ids_for(self, selector: Selector) -> set[int]:
        """Ids of the cgroups (present now) of every container the selector matches, and
        of their descendants: the set a kernel-side cgroup filter map should hold. Cheap
        enough to call every second: the tree is walked only when inotify saw a cgroup
        made, removed or renamed since the last walk (and not more often than the walk
        interval); without inotify, whenever the walk interval has passed."""
        if not selector:
            return set()
        if self._watching is None:
            self._watching = self.cgroups.watch_changes()
        if self.cgroups.changed() and self.cgroups.walk_due():
            self.refresh()
        cached = self._selected.get(selector)
        if cached is not None and cached[0] == self.cgroups.walks:
            return set(cached[1])
        wanted, awaiting = set(), False
        now = self._clock()
        for cgroup_id, _path in self.cgroups.present():
            container = self.resolve(cgroup_id)
            if selector.matches(container):
                wanted.add(cgroup_id)
            elif container is not None and container.name is None:
                named = self._by_container.get(container.id)
                awaiting = awaiting or (named is not None
                                        and named.awaits_name(now, self._name_wait_s))
        if not awaiting:  # else: a name may still come, so match again next time
            self._selected[selector] = (self.cgroups.walks, frozenset(wanted))
        return wanted

    def close(self) -> None:
        """Release the cgroup2 file handle and the inotify watch."""
        if self.handles is not None:
            self.handles.close()
            self.handles = None
        self.cgroups.close()

    def __enter__(self) -> ContainerResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
