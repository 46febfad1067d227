"""Is the cgroup tree still as last walked? inotify on every cgroup directory says.

A walk costs ~20 µs per cgroup (the kernel lists every control file), so a container
filter that must pick up new containers within a second cannot afford to walk a busy
node's tree every second. mkdir/rmdir/rename of a cgroup go through the VFS, which
reports them to inotify watches on the parent (cgroupfs has no other change signal: a
cgroup directory's mtime does not move). With a watch on each directory, a refresh costs
one non-blocking read when nothing changed, and a walk only when something did.
"""

from __future__ import annotations

import ctypes
import errno
import os

IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR
_libc = ctypes.CDLL(None, use_errno=True)


class WatchUnavailable(Exception):
    """inotify cannot be used (limit on instances reached, no support)."""


class DirectoryWatch:
    """Tells whether any watched directory gained, lost or renamed an entry."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise WatchUnavailable(f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        self._fd = fd
        self.complete = True  # False once a directory could not be watched

    def add(self, path: str) -> None:
        # ENOENT: removed meanwhile (the next walk sees it); ENOSPC: out of watches, so
        # changes under it would go unnoticed: say so, the caller walks instead
        failed = _libc.inotify_add_watch(self._fd, os.fsencode(path), _MASK) < 0
        if failed and ctypes.get_errno() != errno.ENOENT:
            self.complete = False

    def changed(self) -> bool:
        """Whether anything happened since the last call (events are drained)."""
        seen = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return seen
            if not data:
                return seen
            seen = True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
