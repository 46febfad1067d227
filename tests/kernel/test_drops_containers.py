"""Listener drops inside real podman containers (issue 13 item 4), seen from the host.

Two containers, each in its own network namespace, both serving on port 8080 (busybox
httpd, listen backlog 9). Each httpd is stopped (SIGSTOP) so nothing accepts, its queue
fills (10 connections) and every later SYN is refused. The monitor on the host must report
each container's drops apart, equal to that namespace's TcpExt ListenOverflows delta (read
inside it with nsenter), with the namespace inode and the container's process as owner.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from tcpaccept.drops import ListenerDropMonitor
from tests.support.containers import Podman, RunningContainer, unique_name
from tests.support.netns import NetNamespace

pytestmark = [pytest.mark.kernel, pytest.mark.host_only]  # podman

PORT = 8080
HTTPD_BACKLOG = 9  # busybox httpd's listen(); the queue holds one more


@pytest.fixture
def podman() -> Iterator[Podman]:
    with Podman() as runtime:
        yield runtime


def wait_listening(ns: NetNamespace, timeout: float = 10.0) -> None:
    def probe() -> bool:
        with socket.socket() as client:
            client.settimeout(1)
            return client.connect_ex(("127.0.0.1", PORT)) == 0

    deadline = time.monotonic() + timeout
    while not ns.run(probe):
        if time.monotonic() > deadline:
            pytest.fail(f"httpd in {ns.name} is not listening on {PORT}", pytrace=False)
        time.sleep(0.1)


@contextlib.contextmanager
def stopped(container: RunningContainer) -> Iterator[None]:
    os.kill(container.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(container.pid, signal.SIGCONT)


def flood(ns: NetNamespace, count: int) -> int:
    return ns.flood(PORT, count, backlog=HTTPD_BACKLOG)


def comm_of(pid: int) -> str:
    with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
        return f.read().rstrip("\n")


def test_drops_of_two_containers_on_the_same_port_are_reported_apart(podman: Podman) -> None:
    first, second = podman.run(unique_name()), podman.run(unique_name())
    first_ns, second_ns = NetNamespace.of_process(first.pid), NetNamespace.of_process(second.pid)
    assert first_ns.inode != second_ns.inode
    for ns in (first_ns, second_ns):
        wait_listening(ns)
    with stopped(first), stopped(second), ListenerDropMonitor(frozenset({PORT})) as monitor:
        monitor.poll()
        expected = {first_ns.inode: flood(first_ns, 30), second_ns.inode: flood(second_ns, 15)}
        reports = [r for r in monitor.poll() if r.netns in expected]
        assert monitor.warnings() == []
    # A stopped server accepts nothing: its queue takes backlog + 1, the rest are refused.
    assert expected == {first_ns.inode: 30 - (HTTPD_BACKLOG + 1),
                        second_ns.inode: 15 - (HTTPD_BACKLOG + 1)}
    assert {r.netns: r.dropped for r in reports} == expected
    owners = {first_ns.inode: first.pid, second_ns.inode: second.pid}
    for report in reports:
        assert report.lport == PORT and report.backlog_max == HTTPD_BACKLOG
        assert (report.pid, report.comm) == (owners[report.netns], comm_of(owners[report.netns]))
        assert report.container is None  # the lead attaches containers from the owner pid
