"""Real TCP servers for the kernel tests: child processes with a known pid and comm.

A server is a Python child process that sets its own comm (prctl), listens, reports its
port on stdout, then obeys simple commands on stdin ("accept N", "quit"), so a test knows
exactly which accepts happened, by whom, and when.
"""

from __future__ import annotations

import ctypes
import json
import socket
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

SERVER_CODE = textwrap.dedent(
    """
    import ctypes, json, os, socket, sys, time
    family, host, backlog, comm, v6only, port = sys.argv[1:7]
    ctypes.CDLL(None).prctl(15, comm.encode(), 0, 0, 0)  # PR_SET_NAME
    s = socket.socket(int(family), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if int(family) == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    s.bind((host, int(port)))
    s.listen(int(backlog))
    print(json.dumps({"port": s.getsockname()[1], "fd": s.fileno(), "pid": os.getpid()}),
          flush=True)
    kept = []
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "accept":
            peers = []
            for _ in range(int(cmd[1])):
                c, addr = s.accept()
                kept.append(c)
                peers.append([addr[0], addr[1], c.fileno()])
            print(json.dumps(peers), flush=True)
        elif cmd[0] == "sleep-accept":  # accept N, sleeping S seconds before each
            peers = []
            for _ in range(int(cmd[1])):
                time.sleep(float(cmd[2]))
                before = time.monotonic()  # the kernel's accept lies between the two
                c, addr = s.accept()
                after = time.monotonic()
                kept.append(c)
                peers.append([addr[0], addr[1], c.fileno(), before, after])
            print(json.dumps(peers), flush=True)
        elif cmd[0] == "nonblocking-accept":
            s.setblocking(False)
            try:
                s.accept()
                print(json.dumps("accepted"), flush=True)
            except BlockingIOError:
                print(json.dumps("EAGAIN"), flush=True)
            s.setblocking(True)
        elif cmd[0] == "quit":
            break
    """
)


@dataclass
class Server:
    """A listening server process; accept() happens only when asked."""

    proc: subprocess.Popen
    family: int
    host: str
    port: int
    listen_fd: int
    comm: str
    server_pid: Optional[int] = None  # as the server reports it (behind a wrapper command)

    @property
    def pid(self) -> int:
        return self.server_pid or self.proc.pid

    def _ask(self, command: str) -> object:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def accept(self, n: int = 1) -> list[tuple[str, int, int]]:
        """Accept n connections; returns (peer address, peer port, new fd) for each."""
        return [tuple(p) for p in self._ask(f"accept {n}")]  # type: ignore[union-attr]

    def accept_async(self, n: int = 1, sleep: float = 0.0) -> None:
        """Start accepting without waiting (the accept may block); then collect()."""
        assert self.proc.stdin
        self.proc.stdin.write(f"sleep-accept {n} {sleep}\n")
        self.proc.stdin.flush()

    def collect(self) -> list[tuple[str, int, int]]:
        return [(addr, port, fd) for addr, port, fd, _, _ in self.collect_timed()]

    def collect_timed(self) -> list[tuple[str, int, int, float, float]]:
        """As collect(), with the server's CLOCK_MONOTONIC (the BPF clock's) read just
        before and just after each accept() call, in seconds."""
        assert self.proc.stdout
        return [tuple(p) for p in json.loads(self.proc.stdout.readline())]

    def nonblocking_accept(self) -> str:
        return str(self._ask("nonblocking-accept"))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(5)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(
    host: str = "127.0.0.1",
    family: int = socket.AF_INET,
    backlog: int = 128,
    comm: str = "acceptsrv",
    v6only: bool = True,
    port: int = 0,
    netns: Optional[str] = None,
    prefix: Sequence[str] = (),
) -> Server:
    """prefix: a command that execs the server, e.g. setpriv (another uid) or unshare -m."""
    cmd = [*prefix, sys.executable, "-c", SERVER_CODE, str(int(family)), host, str(backlog),
           comm, str(int(v6only)), str(port)]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout
    hello = json.loads(proc.stdout.readline())
    return Server(proc, family, host, hello["port"], hello["fd"], comm, hello["pid"])


def connect(host: str, port: int, family: int = socket.AF_INET, source: Optional[str] = None,
            netns: Optional[str] = None) -> socket.socket:
    """A blocking client connection; the caller closes it.

    source: local address to bind first; netns: a named network namespace (ip netns) to
    create the socket in (a socket stays in the namespace it was created in).
    """
    if netns:
        return _in_netns(netns, lambda: connect(host, port, family, source))
    c = socket.socket(family, socket.SOCK_STREAM)
    if source:
        c.bind((source, 0))
    c.connect((host, port))
    return c


def _in_netns(name: str, work: Callable[[], T]) -> T:
    """Run work() in a thread switched into /run/netns/NAME (setns moves only that thread)."""
    result: list = []

    def thread() -> None:
        try:
            with open(f"/run/netns/{name}") as ns:
                if _libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {name}")
            result.append((True, work()))
        except BaseException as exc:  # handed to the caller
            result.append((False, exc))

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value
