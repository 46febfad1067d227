"""Overflowing a listener on purpose, and the kernel's own count of it (TcpExt).

A listen(1) socket that never accepts holds 2 connections; every later SYN is refused, which
counts once in the listener's sk_drops and once in its namespace's TcpExt ListenOverflows.
Callers close the clients before measuring: a refused client retransmits its SYN after 1 s,
3 s, ... and each retry would be one more overflow; a closed SYN-SENT socket just vanishes.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import time
from typing import Callable

Counters = tuple[int, int]  # (ListenOverflows, ListenDrops)


def parse_listen_overflows(text: str, where: str = "/proc/net/netstat") -> Counters:
    """(ListenOverflows, ListenDrops) from the text of a /proc/net/netstat."""
    lines = text.splitlines()
    # The file is pairs of lines: "TcpExt: Name1 Name2 ..." then "TcpExt: 1 2 ...".
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            try:
                return int(table["ListenOverflows"]), int(table["ListenDrops"])
            except (KeyError, ValueError):
                break
    raise ValueError(f"no TcpExt ListenOverflows/ListenDrops in {where}")


def read_listen_overflows(path: str = "/proc/net/netstat") -> Counters:
    """(ListenOverflows, ListenDrops) of the caller's network namespace."""
    with open(path, encoding="ascii") as f:
        return parse_listen_overflows(f.read(), path)


def flood(server: socket.socket, count: int = 20) -> None:
    """``count`` connects to ``server`` (in this namespace), the queue filled first, then
    close them all."""
    port = server.getsockname()[1]
    family = "-4" if server.family == socket.AF_INET else "-6"

    def queue() -> tuple[int, int]:
        """(Recv-Q, Send-Q) of a listener: its accept queue length and listen() backlog."""
        out = subprocess.run(["ss", "-ltnH", family, f"sport = :{port}"],
                             capture_output=True, text=True, check=True, timeout=10).stdout
        fields = out.split()
        if len(fields) < 3:
            raise AssertionError(f"no listener on port {port}")
        return int(fields[1]), int(fields[2])

    flood_address(server.family, server.getsockname()[:2], count, fill=queue()[1] + 1,
                  queued=lambda: queue()[0])


def flood_address(
    family: int,
    address: tuple,
    count: int = 20,
    overflows: Callable[[], Counters] = read_listen_overflows,
    fill: int = 0,
    queued: Callable[[], int] | None = None,
) -> None:
    """Connects from the calling thread's namespace; ``overflows`` reads that namespace's.

    With ``fill`` (the queue's capacity, backlog + 1) and ``queued`` (the listener's accept
    queue length), the first ``fill`` connections complete, one at a time, before the rest
    are sent: then every later SYN meets a full queue (1 sk_drop, 1 ListenOverflow). Sent all
    at once, two handshakes can race for the last place when the machine is busy (softirqs
    deferred), and the loser's ACK counts 2 sk_drops for 1 ListenOverflow.
    """
    capacity = fill
    if queued is not None:
        fill = max(0, capacity - queued())  # a queue still full from an earlier flood
    clients = []
    try:
        for _ in range(fill):
            client = socket.create_connection(address, timeout=5)
            clients.append(client)
        if queued is not None:
            _wait_for(lambda: queued() >= capacity, f"{capacity} connections queued")
        for _ in range(count - fill):
            client = socket.socket(family, socket.SOCK_STREAM)
            clients.append(client)
            client.setblocking(False)
            assert client.connect_ex(address) in (0, errno.EINPROGRESS)
        # Loopback handles each SYN inside connect(); this covers a deferred softirq.
        wait_quiet(overflows)
    finally:
        for client in clients:
            client.close()
    wait_quiet(overflows)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        time.sleep(0.01)


def wait_quiet(overflows: Callable[[], Counters] = read_listen_overflows,
               timeout: float = 2.0) -> None:
    """Until ListenOverflows stops moving for 50 ms."""
    deadline = time.monotonic() + timeout
    last = overflows()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = overflows()
        if now == last:
            return
        last = now
