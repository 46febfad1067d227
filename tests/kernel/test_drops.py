"""Listener overflow monitoring against the running kernel, with real overflowing listeners.

Each test floods a listen(1) socket that never accepts: the first two connections fill its
accept queue (a backlog of 1 holds 2), and every later SYN is refused, which counts once in
the listener's sk_drops and once in TcpExt ListenOverflows. The clients are closed before
measuring: a refused client retransmits its SYN after 1 s, 3 s, ... and each retry would be
one more overflow, so closing them (a socket in SYN-SENT just vanishes) freezes the counts.
The tests run in a network namespace of their own (the module's fixture moves pytest's
thread there and back): its ListenOverflows delta counts only the listeners they flood,
whatever else overflows on the machine. The window it is measured over is the one between
the two polls.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from tcpaccept.drops import DropReport, ListenerDropMonitor
from tests.support import netns
from tests.support.overflow import flood, read_listen_overflows

pytestmark = [pytest.mark.kernel, pytest.mark.method_agnostic]  # sock_diag only

FLOOD = 20
BACKLOG = 1


@pytest.fixture(autouse=True, scope="module")
def own_namespace() -> Iterator[netns.NetNamespace]:
    namespaces = netns.create("tcpa-drops-own")
    try:
        with netns.entered(next(namespaces)) as namespace:
            yield namespace
    finally:
        namespaces.close()  # deletes it


def own_comm() -> str:
    with open("/proc/self/comm", encoding="utf-8") as f:
        return f.read().rstrip("\n")


def listener(family: int, addr: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((addr, 0))
    except OSError as exc:
        sock.close()
        pytest.fail(f"cannot bind {addr}: {exc.strerror}")
    sock.listen(BACKLOG)
    return sock


@pytest.fixture(params=[(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], ids=["v4", "v6"])
def server(request) -> Iterator[socket.socket]:
    sock = listener(*request.param)
    yield sock
    sock.close()


def overflow_delta(before: tuple[int, int]) -> int:
    return read_listen_overflows()[0] - before[0]


def own_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def here(reports: list[DropReport]) -> list[DropReport]:
    """Reports for this namespace's listeners (the monitor samples every namespace)."""
    return [r for r in reports if r.netns == own_netns()]


def reports_for(reports: list[DropReport], sock: socket.socket) -> list[DropReport]:
    port = sock.getsockname()[1]
    return [r for r in here(reports) if r.lport == port]


def test_flood_reported_once_with_owner(server: socket.socket) -> None:
    with ListenerDropMonitor() as monitor:
        assert monitor.poll() == []
        before = read_listen_overflows()
        flood(server)
        expected = overflow_delta(before)
        reports = monitor.poll()
    # 20 connects, 2 fit in the queue: the rest are refused (18, or more where a slow
    # machine let a refused client retransmit its SYN before it was closed).
    assert expected >= FLOOD - (BACKLOG + 1)
    mine = reports_for(reports, server)
    assert len(mine) == 1, reports
    report = mine[0]
    assert report.dropped == expected
    assert report.pid == os.getpid()
    assert report.comm == own_comm()
    assert report.inode == os.fstat(server.fileno()).st_ino
    assert (report.family, report.laddr) == (server.family, server.getsockname()[0])
    assert (report.backlog, report.backlog_max) == (BACKLOG + 1, BACKLOG)
    assert report.lport == server.getsockname()[1]
    assert report.netns == own_netns()


def test_sk_drops_match_listen_drops_for_syn_overflows(server: socket.socket) -> None:
    with ListenerDropMonitor(frozenset({server.getsockname()[1]})) as monitor:
        monitor.poll()
        before = read_listen_overflows()
        flood(server)
        after = read_listen_overflows()
        (report,) = here(monitor.poll())
    assert report.dropped == after[0] - before[0] == after[1] - before[1]


def test_no_new_traffic_no_report(server: socket.socket) -> None:
    with ListenerDropMonitor() as monitor:
        monitor.poll()
        flood(server)
        assert len(reports_for(monitor.poll(), server)) == 1
        assert reports_for(monitor.poll(), server) == []


def test_flush_reports_drops_after_last_poll(server: socket.socket) -> None:
    with ListenerDropMonitor() as monitor:
        monitor.poll()
        flood(server)
        monitor.poll()
        before = read_listen_overflows()
        flood(server, 5)  # the queue is still full: all five are refused
        expected = overflow_delta(before)
        (report,) = reports_for(monitor.flush(), server)
    assert report.dropped == expected == 5


def test_existing_drops_are_baseline(server: socket.socket) -> None:
    flood(server)
    with ListenerDropMonitor() as monitor:
        assert reports_for(monitor.poll(), server) == []
        assert reports_for(monitor.poll(), server) == []


def test_listener_created_after_start_reports_all_drops() -> None:
    with ListenerDropMonitor() as monitor:
        monitor.poll()
        late = listener(socket.AF_INET, "127.0.0.1")
        try:
            before = read_listen_overflows()
            flood(late)
            expected = overflow_delta(before)
            (report,) = reports_for(monitor.poll(), late)
        finally:
            late.close()
    assert report.dropped == expected


def test_port_filter(server: socket.socket) -> None:
    other = listener(server.family, server.getsockname()[0])
    try:
        ports = {server.getsockname()[1], other.getsockname()[1]}
        unused = max(ports) + 1 if max(ports) < 65535 else min(ports) - 1
        # Several ports: the kernel filters with inet_diag bytecode.
        with ListenerDropMonitor(frozenset(ports | {unused})) as monitor:
            monitor.poll()
            before = read_listen_overflows()
            flood(server)
            expected = overflow_delta(before)
            before = read_listen_overflows()
            flood(other, 6)
            expected_other = overflow_delta(before)
            got = {r.lport: r.dropped for r in here(monitor.poll())}
        assert got == {
            server.getsockname()[1]: expected,
            other.getsockname()[1]: expected_other,
        }
        # Filtered to the other listener only: the flooded one is not looked at.
        with ListenerDropMonitor(frozenset({other.getsockname()[1]})) as monitor:
            monitor.poll()
            flood(server)
            assert here(monitor.poll()) == []
    finally:
        other.close()


def test_closed_listener_is_forgotten(server: socket.socket) -> None:
    doomed = listener(server.family, server.getsockname()[0])
    with ListenerDropMonitor() as monitor:
        monitor.poll()
        flood(doomed)
        doomed.close()  # its drops since the last poll die with it
        before = read_listen_overflows()
        flood(server)
        expected = overflow_delta(before)
        reports = here(monitor.poll())
    assert [(r.lport, r.dropped) for r in reports] == [(server.getsockname()[1], expected)]


def test_listener_that_stops_and_resumes_listening_is_not_reported_twice(
    server: socket.socket,
) -> None:
    inode = os.fstat(server.fileno()).st_ino
    with ListenerDropMonitor() as monitor:
        monitor.poll()
        flood(server)
        assert [r.inode for r in here(monitor.poll())] == [inode]
        # shutdown(SHUT_RD) takes a listener back to CLOSE; sk_drops is not reset.
        server.shutdown(socket.SHUT_RD)
        assert [r for r in monitor.poll() if r.inode == inode] == []
        server.listen(BACKLOG)
        assert [r for r in monitor.poll() if r.inode == inode] == []
