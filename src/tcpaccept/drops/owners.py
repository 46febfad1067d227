"""Which process owns a listening socket: socket inode -> (pid, comm) through /proc/*/fd.

Socket inodes come from one sockfs for the whole machine, so they are unique across network
namespaces and one /proc scan finds the owners of listeners in every namespace (as long as
the caller sees those processes: run in the host pid namespace).
"""

from __future__ import annotations

import os
import time
from typing import Iterable, Iterator

# How long an inode no process is found to own stays unresolved before /proc is rescanned.
_OWNER_MISS_RETRY_S = 5.0

Owner = tuple[int, "str | None"]


class OwnerCache:
    """inode -> (pid, comm), filled by scanning /proc/*/fd only for inodes not yet known.

    A listener inherited across fork() (pre-forking servers) is open in several processes;
    the lowest pid holding it is reported, usually the parent that created it. pid 1 comes
    last: with socket activation systemd holds the listener too, but the service accepts.
    """

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._known: dict[int, Owner] = {}
        self._misses: dict[int, float] = {}  # inode -> monotonic time of the failed scan

    def lookup(self, inodes: Iterable[int]) -> dict[int, Owner]:
        now = time.monotonic()
        found: dict[int, Owner] = {}
        wanted: set[int] = set()
        for inode in inodes:
            owner = self._known.get(inode)
            if owner is not None and os.path.exists(f"{self._proc}/{owner[0]}"):
                found[inode] = owner
            elif now - self._misses.get(inode, -_OWNER_MISS_RETRY_S) >= _OWNER_MISS_RETRY_S:
                wanted.add(inode)
        if wanted:
            scanned = self._scan(wanted)
            for inode in wanted:
                if inode in scanned:
                    self._known[inode] = found[inode] = scanned[inode]
                    self._misses.pop(inode, None)
                else:
                    self._known.pop(inode, None)
                    self._misses[inode] = now
        return found

    def forget(self, inode: int) -> None:
        self._known.pop(inode, None)
        self._misses.pop(inode, None)

    def _scan(self, wanted: set[int]) -> dict[int, Owner]:
        targets = {f"socket:[{inode}]": inode for inode in wanted}
        owners: dict[int, Owner] = {}
        for pid in self._pids():
            for link in self._fd_links(pid):
                inode = targets.pop(link, None)
                if inode is not None:
                    owners[inode] = (pid, self._comm(pid))
            if not targets:
                break
        return owners

    def _pids(self) -> list[int]:
        try:
            names = os.listdir(self._proc)
        except OSError:
            return []  # no /proc (odd container): report drops without owners
        pids = sorted(int(name) for name in names if name.isdigit())
        if pids and pids[0] == 1:
            pids.append(pids.pop(0))
        return pids

    def _fd_links(self, pid: int) -> Iterator[str]:
        # Processes exit and fds close while we look; other users' fds are unreadable
        # without CAP_SYS_PTRACE. Either way that process simply owns nothing we can see.
        try:
            with os.scandir(f"{self._proc}/{pid}/fd") as entries:
                for entry in entries:
                    try:
                        yield os.readlink(entry.path)
                    except OSError:
                        continue
        except OSError:
            return

    def _comm(self, pid: int) -> str | None:
        try:
            with open(f"{self._proc}/{pid}/comm", encoding="utf-8", errors="replace") as f:
                return f.read().rstrip("\n")
        except OSError:
            return None
