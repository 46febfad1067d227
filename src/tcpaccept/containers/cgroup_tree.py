"""cgroup v2 id -> path, by walking the cgroup2 tree, with ids of removed cgroups kept a while.

The id the kernel reports (``bpf_get_current_cgroup_id()``) is the inode number of the
cgroup's directory in the cgroup2 filesystem. A walk reads each directory's entries with
``scandir``: on kernfs the entry's ``d_ino`` is that inode, so no ``stat`` per cgroup is
needed; still, a walk costs ~20 µs per cgroup here (~12 ms for 600 cgroups: the kernel
lists every control file of every cgroup), so it is not done per event.

Walks happen on demand (a filter refresh; an unknown id where file handles cannot be used,
see handles.py; housekeeping) and are rate-limited, so a flood of events from unknown
cgroups costs one walk per interval, not one per event. A cgroup that disappears keeps
its path for ``ttl_gone_s``: events queued before a container was removed still resolve.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterator, Optional

from .watch import DirectoryWatch, WatchUnavailable

CGROUP2_DEFAULT = "/sys/fs/cgroup"
ROOT_CGROUP_ID = 1  # the root cgroup's id; also what a cgroup v1-only host reports


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """Where cgroup2 is mounted: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified
    on a hybrid one (whose /sys/fs/cgroup holds v1 trees, with inode numbers that collide
    with v2 ids). None when there is no cgroup2 mount (v1-only host)."""
    try:
        with open(mountinfo) as mounts:
            for line in mounts:
                fields = line.split()
                if "-" in fields and fields[fields.index("-") + 1] == "cgroup2":
                    return fields[4]
    except OSError:
        pass
    return None


def cgroup2_root_under(host_root: str) -> Optional[str]:
    """The cgroup2 tree of the host whose root directory is mounted at ``host_root``.

    For ``/`` the tool's own mount table says; under another root (the tool running in a
    container with the host's / at /host) the tree is recognised by its root's files."""
    if os.path.realpath(host_root) == "/":
        mount = cgroup2_mount()
        if mount is not None:
            return mount
    for candidate in ("sys/fs/cgroup", "sys/fs/cgroup/unified"):
        path = os.path.join(host_root, candidate)
        if os.path.exists(os.path.join(path, "cgroup.controllers")):
            return path
    return None


class CgroupTree:
    """Maps cgroup ids to paths relative to the cgroup2 root (``/`` is the root)."""

    def __init__(self, root: Optional[str], ttl_gone_s: float = 600.0,
                 min_walk_interval_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.ttl_gone_s = ttl_gone_s
        self.min_walk_interval_s = min_walk_interval_s
        self._clock = clock
        self._paths: dict[int, str] = {}
        self._present: set[int] = set()
        self._gone_since: dict[int, float] = {}
        self._last_walk: Optional[float] = None
        self.walks = 0  # how many walks were made (for tests and the benchmark)
        self._watch: Optional[DirectoryWatch] = None
        self._changed = True  # since the last walk (always, without a watch)

    def watch_changes(self) -> bool:
        """Put an inotify watch on every cgroup directory from the next walk on, so that
        ``changed()`` can tell whether a walk would find anything new. False if inotify
        cannot be used (then ``changed()`` is always True)."""
        if self._watch is None and self.root:
            try:
                self._watch = DirectoryWatch()
            except WatchUnavailable:
                return False
            self._changed = True
        return self._watch is not None

    def changed(self) -> bool:
        """Whether the tree may differ from the last walk."""
        if self._watch is None or not self._watch.complete:
            return True
        if self._watch.changed():
            self._changed = True
        return self._changed

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def path(self, cgroup_id: int) -> Optional[str]:
        """The cgroup's path as of the last walk; None if no walk has seen this id (or it
        has been gone for longer than the TTL). Walking again is the caller's choice."""
        return self._paths.get(cgroup_id)

    def learn(self, cgroup_id: int, path: str) -> None:
        """Remember a path found without a walk (by file handle); the next walk checks it."""
        self._paths[cgroup_id] = path

    def is_present(self, cgroup_id: int) -> bool:
        """Whether the last walk saw this cgroup (False for gone ones kept for the TTL)."""
        return cgroup_id in self._present

    def present(self) -> Iterator[tuple[int, str]]:
        """(id, path) of every cgroup the last walk saw."""
        for cgroup_id in self._present:
            yield cgroup_id, self._paths[cgroup_id]

    def seconds_since_walk(self) -> float:
        return float("inf") if self._last_walk is None else self._clock() - self._last_walk

    def walk_due(self) -> bool:
        return (self._last_walk is None
                or self._clock() - self._last_walk >= self.min_walk_interval_s)

    def walk(self) -> set[int]:
        """Re-read the tree. Returns the ids forgotten (gone for longer than the TTL)."""
        now = self._clock()
        self._last_walk = now
        self.walks += 1
        if self._watch is not None:
            self._watch.changed()  # drained before the scan: later events mean walk again
        seen = dict(self._scan()) if self.root else {}
        for cgroup_id in self._paths.keys() - seen.keys():  # walked or learned before
            self._gone_since.setdefault(cgroup_id, now)
        for cgroup_id in seen.keys() & self._gone_since.keys():
            del self._gone_since[cgroup_id]  # cannot happen with 64-bit ids; be safe
        forgotten = {cgroup_id for cgroup_id, since in self._gone_since.items()
                     if now - since > self.ttl_gone_s}
        for cgroup_id in forgotten:
            del self._gone_since[cgroup_id]
            self._paths.pop(cgroup_id, None)
        self._changed = False
        if self._watch is not None:
            new = seen.keys() - self._present
            for cgroup_id in new:
                self._watch.add(os.path.join(self.root or "/", seen[cgroup_id].lstrip("/")))
            # a child made in a new directory before its watch was added went unseen
            self._changed = bool(new)
        self._paths.update(seen)
        self._present = set(seen)
        return forgotten

    def _scan(self) -> Iterator[tuple[int, str]]:
        assert self.root is not None
        try:
            yield os.stat(self.root).st_ino, "/"
        except OSError:
            return
        pending = [(self.root, "")]
        while pending:
            directory, relative = pending.pop()
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            path = f"{relative}/{entry.name}"
                            yield entry.inode(), path
                            pending.append((entry.path, path))
            except OSError:
                continue  # removed while walking


def proc_cgroup_path(proc_root: str, pid: int) -> Optional[str]:
    """The path of a process's cgroup from /proc/PID/cgroup, for hosts where the id does
    not say (cgroup v1 only, or a process left in the v2 root on a hybrid host): the v2
    line if it is not the root, else the first v1 hierarchy that is not the root."""
    try:
        with open(os.path.join(proc_root, str(pid), "cgroup")) as lines:
            entries = [line.rstrip("\n").split(":", 2) for line in lines]
    except OSError:
        return None
    unified = [e[2] for e in entries if len(e) == 3 and e[0] == "0" and e[1] == ""]
    if unified and unified[0] != "/":
        return unified[0]
    for entry in entries:
        if len(entry) == 3 and entry[0] != "0" and entry[2] != "/":
            return entry[2]
    return None
