"""cgroup v2 id -> path, for the CGROUP column. The id is the cgroup directory's inode."""

from __future__ import annotations

import os

CGROUP2_ROOT = "/sys/fs/cgroup"


class CgroupPaths:
    """Resolves ids by walking the cgroup2 tree, once per unknown id, caching every
    directory seen on the way (a busy host has few cgroups and many events)."""

    def __init__(self, root: str = CGROUP2_ROOT) -> None:
        self.root = root
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
