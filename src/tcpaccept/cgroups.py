"""cgroup v2 id -> path, for the CGROUP column. The id is the cgroup directory's inode."""

from __future__ import annotations

import os
from typing import Optional

CGROUP2_ROOT = "/sys/fs/cgroup"


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> str:
    """Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on a unified host,
    /sys/fs/cgroup/unified on a hybrid one (whose /sys/fs/cgroup also holds v1 trees,
    with inode numbers that collide with v2 ids)."""
    try:
        with open(mountinfo) as mounts:
            for line in mounts:
                fields = line.split()
                if "-" in fields and fields[fields.index("-") + 1] == "cgroup2":
                    return fields[4]
    except OSError:
        pass
    return CGROUP2_ROOT


class CgroupPaths:
    """Resolves ids by walking the cgroup2 tree, once per unknown id, caching every
    directory seen on the way (a busy host has few cgroups and many events)."""

    def __init__(self, root: Optional[str] = None) -> None:
        self.root = root or cgroup2_root()
        self._paths: dict[int, str] = {}

    def _walk(self) -> None:
        for dirpath, _dirs, _files in os.walk(self.root):
            try:
                inode = os.stat(dirpath).st_ino
            except OSError:
                continue  # removed while walking
            relative = dirpath[len(self.root):] or "/"
            self._paths[inode] = relative

    def __call__(self, cgroup_id: int) -> str:
        path = self._paths.get(cgroup_id)
        if path is None:
            self._walk()
            # Remember misses too (a cgroup already gone), so they cost one walk only.
            path = self._paths.setdefault(cgroup_id, f"cgroup:{cgroup_id}")
        return path
