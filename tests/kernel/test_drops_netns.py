"""Listener drops in every network namespace (issue 13 item 4), through the real kernel.

Each test makes a namespace of its own with ``ip netns add``, runs a backlog-1 Python
listener inside it (``ip netns exec``), overflows it from a thread switched into the
namespace, and compares the monitor's report with that namespace's own TcpExt
ListenOverflows delta (``ip netns exec NS cat /proc/net/netstat``).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import pytest

from tcpaccept.drops import ListenerDropMonitor
from tcpaccept.drops.abi import request_body
from tcpaccept.drops.namespaces import open_in_namespace
from tests.support import netns as netns_support
from tests.support.netns import NetNamespace
from tests.support.servers import Server, start_server

pytestmark = [pytest.mark.kernel, pytest.mark.method_agnostic]  # sock_diag only

COMM = "nsdropsrv"  # set by the server itself (prctl), so the owner lookup is checked exactly
FLOOD = 20


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    yield from netns_support.create()


def own_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def socket_inode(server: Server) -> int:
    link = os.readlink(f"/proc/{server.pid}/fd/{server.listen_fd}")  # "socket:[N]"
    return int(link[len("socket:[") : -1])


def flood_inside(ns: NetNamespace, port: int, count: int = FLOOD) -> tuple[int, int]:
    """Overflow the backlog-1 127.0.0.1:port of the namespace: its ListenOverflows delta,
    and the SYNs its refused clients resent meanwhile (TCPSynRetrans; a slow machine resends
    after 1 s), each of which overflowed once more. 2 connections fit in a backlog-1 queue
    (none if it is still full): the delta is exactly the refused connects plus resent SYNs."""
    before = ns.tcp_ext("TCPSynRetrans")
    overflows = ns.flood(port, count, backlog=1)
    return overflows, ns.tcp_ext("TCPSynRetrans") - before


def test_drops_in_another_namespace_are_reported_with_its_inode_and_owner(
    namespace: NetNamespace,
) -> None:
    host_thread_netns = own_netns()
    with start_server(backlog=1, comm=COMM, netns=namespace.name) as server:
        with ListenerDropMonitor() as monitor:
            assert namespace.inode in monitor.namespaces()
            monitor.poll()  # the baseline
            expected, resent = flood_inside(namespace, server.port)
            reports = [r for r in monitor.poll() if r.netns == namespace.inode]
            assert monitor.warnings() == []
        inode = socket_inode(server)
    assert own_netns() == host_thread_netns  # setns stayed on the helper threads
    assert expected == FLOOD - 2 + resent
    (report,) = reports
    assert report.dropped == expected
    assert (report.laddr, report.lport, report.family) == ("127.0.0.1", server.port, socket.AF_INET)
    assert (report.pid, report.comm, report.inode) == (server.pid, COMM, inode)
    assert (report.backlog, report.backlog_max) == (2, 1)
    assert report.container is None and report.time_ns > 0


@pytest.fixture
def other_namespace() -> Iterator[NetNamespace]:
    yield from netns_support.create()


def test_same_port_in_two_namespaces_reported_apart(
    namespace: NetNamespace, other_namespace: NetNamespace
) -> None:
    with start_server(backlog=1, comm=COMM, netns=namespace.name) as first, \
            start_server(backlog=1, comm="nsdropsrv2", netns=other_namespace.name,
                         port=first.port) as second, \
            ListenerDropMonitor(frozenset({first.port})) as monitor:
        monitor.poll()
        expected_first, resent_first = flood_inside(namespace, first.port, 7)
        expected_second, resent_second = flood_inside(other_namespace, second.port)
        got = {r.netns: (r.dropped, r.pid, r.comm) for r in monitor.poll()}
    # Not a fixed 5 and 18: each SYN a refused client resends is one more overflow.
    assert expected_first == 7 - 2 + resent_first
    assert expected_second == FLOOD - 2 + resent_second
    assert got == {namespace.inode: (expected_first, first.pid, COMM),
                   other_namespace.inode: (expected_second, second.pid, "nsdropsrv2")}


def test_namespace_created_after_start_reports_all_drops_then_is_dropped() -> None:
    with ListenerDropMonitor(namespace_rescan_s=0) as monitor:
        monitor.poll()  # the baseline, before the namespace exists
        with contextlib.contextmanager(netns_support.create)() as ns:
            assert ns.inode not in monitor.namespaces()
            with start_server(backlog=1, comm=COMM, netns=ns.name) as server:
                # Drops taken before the monitor has seen the namespace count too: its
                # listeners are all new since tracing started.
                expected, resent = flood_inside(ns, server.port)
                reports = [r for r in monitor.poll() if r.netns == ns.inode]
                assert ns.inode in monitor.namespaces()
        # The server has exited and the name is gone: the namespace is let go.
        monitor.poll()
        assert ns.inode not in monitor.namespaces()
        assert monitor.warnings() == []
    (report,) = reports
    assert (report.dropped, report.pid, report.comm) == (expected, server.pid, COMM)
    assert expected == FLOOD - 2 + resent


def test_drops_from_before_start_in_a_namespace_are_baseline(namespace: NetNamespace) -> None:
    with start_server(backlog=1, comm=COMM, netns=namespace.name) as server:
        overflows, resent = flood_inside(namespace, server.port)
        assert overflows == FLOOD - 2 + resent  # positive control
        with ListenerDropMonitor() as monitor:
            monitor.poll()  # the baseline: the flood above is history
            assert [r for r in monitor.poll() if r.netns == namespace.inode] == []
            expected, resent = flood_inside(namespace, server.port, 5)  # queue still full
            reports = [r for r in monitor.poll() if r.netns == namespace.inode]
    assert [r.dropped for r in reports] == [expected] == [5 + resent]


def test_one_namespace_only_when_asked(namespace: NetNamespace) -> None:
    with start_server(backlog=1, comm=COMM, netns=namespace.name) as server, \
            ListenerDropMonitor(all_namespaces=False) as monitor:
        assert monitor.namespaces() == [own_netns()]
        monitor.poll()
        overflows, resent = flood_inside(namespace, server.port)
        assert overflows == FLOOD - 2 + resent  # positive control
        assert [r for r in monitor.poll() if r.netns != own_netns()] == []


def test_socket_opened_in_a_namespace_dumps_that_namespace(namespace: NetNamespace) -> None:
    with start_server(backlog=1, comm=COMM, netns=namespace.name) as server:
        before = own_netns()
        sock = open_in_namespace(namespace.inode, [namespace.path])
        try:
            ports = [s.lport for s in sock.dump(request_body(socket.AF_INET, None))]
        finally:
            sock.close()
    assert own_netns() == before  # the caller's thread never moved
    assert ports == [server.port]  # the namespace's only listener, none of the host's
