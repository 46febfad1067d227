"""Network namespaces for tests: one of a test's own (``ip netns add``, deleted afterwards,
also on failure), or a container's, entered through its process."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
import uuid
from typing import Callable, Iterator, Sequence, TypeVar

from tests.support.overflow import Counters, flood_address, parse_listen_overflows

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetNamespace:
    """A named namespace (``ip netns``), or with of_process() the one a process is in."""

    def __init__(self, name: str, path: str = "", enter: Sequence[str] = ()) -> None:
        self.name = name
        self.path = path or f"/run/netns/{name}"
        self.inode = os.stat(self.path).st_ino
        self._enter = list(enter) or ["ip", "netns", "exec", name]

    @classmethod
    def of_process(cls, pid: int) -> NetNamespace:
        """A container's namespace, through its process (nsenter, as for podman)."""
        return cls(f"pid {pid}", f"/proc/{pid}/ns/net", ["nsenter", "-t", str(pid), "-n"])

    def listen_overflows(self) -> Counters:
        """The namespace's own TcpExt counters, read by a process inside it."""
        text = subprocess.run(
            [*self._enter, "cat", "/proc/net/netstat"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout
        return parse_listen_overflows(text, f"/proc/net/netstat in netns {self.name}")

    def tcp_ext(self, name: str) -> int:
        """One TcpExt counter of the namespace (e.g. TCPSynRetrans), read inside it."""
        lines = subprocess.run(
            [*self._enter, "cat", "/proc/net/netstat"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
                return int(dict(zip(names.split()[1:], values.split()[1:]))[name])
        raise AssertionError(f"no TcpExt {name} in netns {self.name}")

    def accept_queue(self, port: int) -> int:
        """Recv-Q of the namespace's TCP listener on ``port``: its accept queue length."""
        out = subprocess.run(
            [*self._enter, "ss", "-ltnH", f"sport = :{port}"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.split()
        if len(out) < 2:
            raise AssertionError(f"no listener on port {port} in netns {self.name}")
        return int(out[1])

    def flood(self, port: int, count: int, backlog: int) -> int:
        """``count`` connects to 127.0.0.1:port inside, the queue filled first (see
        overflow.flood_address); the clients are closed after. Returns the namespace's
        ListenOverflows delta."""
        before = self.listen_overflows()[0]
        self.run(lambda: flood_address(socket.AF_INET, ("127.0.0.1", port), count,
                                       self.listen_overflows, fill=backlog + 1,
                                       queued=lambda: self.accept_queue(port)))
        return self.listen_overflows()[0] - before

    def run(self, work: Callable[[], T]) -> T:
        """work() on a thread switched into the namespace; sockets it creates stay there."""
        outcome: list = []

        def inside() -> None:
            try:
                with open(self.path) as ns:
                    if _libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {self.name}")
                outcome.append((True, work()))
            except BaseException as exc:  # handed to the caller
                outcome.append((False, exc))

        worker = threading.Thread(target=inside)
        worker.start()
        worker.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value


@contextlib.contextmanager
def entered(namespace: NetNamespace) -> Iterator[NetNamespace]:
    """The calling thread inside namespace until the block ends, then back where it was.
    On pytest's main thread, /proc/net/* and the processes it starts follow it."""
    with open("/proc/thread-self/ns/net") as home, open(namespace.path) as there:
        if _libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {namespace.name}")
        try:
            yield namespace
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's namespace")


def create(prefix: str = "tcpa-drops") -> Iterator[NetNamespace]:
    """Generator for a fixture: yields a fresh namespace with loopback up, then deletes it."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield NetNamespace(name)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)
