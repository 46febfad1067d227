"""The machine's network namespaces, and a sock_diag socket opened inside one of them.

Namespaces are found through the processes in them (/proc/PID/ns/net) and the names
``ip netns`` keeps (/run/netns/NAME bind mounts, which hold a namespace with no process in
it), deduplicated by the namespace's nsfs inode: the same number ``ip netns identify``,
lsns and the tracer's ``netns`` field show.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Union

from .abi import DropMonitorError
from .diag_socket import DiagSocket, reason

CLONE_NEWNET = 0x40000000
NAMED_NETNS_DIR = "/run/netns"
_PATHS_KEPT = 3  # per namespace: enough to survive a few of its processes exiting


class NamespaceGone(DropMonitorError):
    """Its last process exited between the scan and the open: not a failure, just news."""


def own_netns() -> int:
    """Inode of the calling thread's network namespace; 0 without /proc."""
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return 0


def discover(proc: str = "/proc", named: str = NAMED_NETNS_DIR) -> dict[int, list[str]]:
    """netns inode -> a few paths that open it (named ones first: they cannot be reused)."""
    found: dict[int, list[str]] = {}
    for path in _named_paths(named):
        try:
            found.setdefault(os.stat(path).st_ino, []).append(path)
        except OSError:
            continue  # deleted while we looked, or a leftover file that is no namespace
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        path = f"{proc}/{pid}/ns/net"
        try:
            link = os.readlink(path)  # "net:[4026531840]"; a readlink is cheaper than stat
        except OSError:
            continue  # exited, or a kernel thread without namespaces
        if not link.startswith("net:["):
            continue
        paths = found.setdefault(int(link[5:-1]), [])
        if len(paths) < _PATHS_KEPT:
            paths.append(path)
    return found


def _named_paths(named: str) -> list[str]:
    try:
        return [f"{named}/{name}" for name in sorted(os.listdir(named))]
    except OSError:
        return []


def open_in_namespace(inode: int, paths: list[str]) -> DiagSocket:
    """A sock_diag socket created inside namespace ``inode``.

    setns() moves only the calling thread, so it runs on a short-lived helper thread: the
    caller's threads never change namespace, and the socket stays bound to the namespace it
    was created in after the helper is gone. (os.setns exists only from Python 3.12.)
    """
    outcome: list[Union[DiagSocket, BaseException]] = []

    def enter_and_open() -> None:
        try:
            outcome.append(_enter_and_open(inode, paths))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    helper = threading.Thread(target=enter_and_open, name="tcpaccept-netns", daemon=True)
    helper.start()
    helper.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _enter_and_open(inode: int, paths: list[str]) -> DiagSocket:
    why = ""  # stays empty while every path just vanished
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ESRCH):
                why = f"{path}: {reason(exc)}"
            continue
        try:
            if os.fstat(fd).st_ino != inode:
                continue  # the pid was reused by a process of another namespace
            if _libc().setns(fd, CLONE_NEWNET) != 0:
                error = os.strerror(ctypes.get_errno())
                raise DropMonitorError(f"cannot enter network namespace {inode}: {error}")
        finally:
            os.close(fd)
        return DiagSocket.open()
    if not why:
        raise NamespaceGone(f"network namespace {inode} is gone")
    raise DropMonitorError(f"cannot open network namespace {inode}: {why}")


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC
