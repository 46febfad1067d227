"""Issue 6: --drops reports listener overflows through the command line, counted exactly.

TcpExt ListenOverflows is counted per network namespace, so each test's listener lives in a
namespace of the test's own: other traffic on the machine cannot change the expected count,
and the tracer, run on the host, finds the listener there (it samples every namespace).
The host namespace's own listeners are checked the same way in test_drops.py.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support import netns as netns_support
from tests.support.netns import NetNamespace
from tests.support.servers import start_server
from tests.support.tracer import start_tracer

pytestmark = pytest.mark.method_agnostic  # sock_diag only


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    yield from netns_support.create()


def _listener(ns: NetNamespace, backlog: int = 1) -> socket.socket:
    """A listener of this process, created inside ``ns`` (a socket stays where it was made)."""

    def make() -> socket.socket:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(backlog)
        return sock

    return ns.run(make)


def _flood(ns: NetNamespace, server: socket.socket) -> None:
    ns.flood(server.getsockname()[1], 20, backlog=1)


def test_drops_are_reported_and_equal_listen_overflows(namespace: NetNamespace) -> None:
    server = _listener(namespace)
    port = server.getsockname()[1]
    before = namespace.listen_overflows()[0]
    resent_before = namespace.tcp_ext("TCPSynRetrans")
    run = start_tracer("--drops", "-P", str(port))
    _flood(namespace, server)
    # A report while tracing: the sampling interval grows with the listener table's read
    # cost (a busy machine, many open files), so wait for the line, not a fixed time.
    deadline = time.monotonic() + 60
    while '"event": "drop"' not in run.stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    _flood(namespace, server)  # these are left for the report at exit
    run.stop()
    delta = namespace.listen_overflows()[0] - before
    resent = namespace.tcp_ext("TCPSynRetrans") - resent_before
    drops = [o for o in map(json.loads, run.lines) if o["event"] == "drop"]
    server.close()
    # 2 of the first 20 connects fit in the queue, none of the next 20 (it stays full);
    # each SYN a refused client resent before it was closed overflowed once more.
    assert delta == 18 + 20 + resent
    # At least one report while tracing and one more at exit (a slow machine's flood may
    # straddle a sampling tick and add one): together, exactly the namespace's overflows.
    assert len(drops) >= 2, drops
    assert sum(d["dropped"] for d in drops) == delta
    for d in drops:
        assert (d["laddr"], d["lport"], d["backlog_max"]) == ("127.0.0.1", port, 1)
        assert d["pid"] == os.getpid() and d["comm"]


def test_drop_lines_in_text_mode(namespace: NetNamespace) -> None:
    server = _listener(namespace)
    port = server.getsockname()[1]
    before = namespace.listen_overflows()[0]
    run = start_tracer("--drops", "-P", str(port), json_mode=False)
    _flood(namespace, server)
    run.stop()
    delta = namespace.listen_overflows()[0] - before
    server.close()
    rows = [line.split() for line in run.lines if " DROP " in line]
    assert rows, run.stdout  # one, or more where the flood straddles a sampling tick
    for fields in rows:
        assert fields[3:8] == ["DROP", "-", "127.0.0.1", str(port), "2/1"]
    assert sum(int(fields[8].removeprefix("dropped=")) for fields in rows) == delta


def test_summary_shows_drops_per_listener(namespace: NetNamespace) -> None:
    server = _listener(namespace)
    port = server.getsockname()[1]
    before = namespace.listen_overflows()[0]
    run = start_tracer("--summary", "60", "-P", str(port))
    _flood(namespace, server)
    run.stop()
    delta = namespace.listen_overflows()[0] - before
    server.close()
    (summary,) = [o for o in map(json.loads, run.lines) if o["event"] == "summary"]
    (row,) = summary["listeners"]
    assert (row["lport"], row["drops"], row["accepts"]) == (port, delta, 0)


def test_drops_in_another_network_namespace_are_reported(namespace: NetNamespace) -> None:
    """Issue 13: the tracer on the host sees a listener overflowing in another namespace."""
    ns = namespace
    with start_server(backlog=1, comm="nsdropsrv", netns=ns.name) as server:
        run = start_tracer("--drops", "-P", str(server.port))
        resent = ns.tcp_ext("TCPSynRetrans")
        delta = ns.flood(server.port, 20, backlog=1)
        resent = ns.tcp_ext("TCPSynRetrans") - resent
        run.stop()
    drops = [o for o in map(json.loads, run.lines) if o["event"] == "drop"]
    assert delta == 18 + resent  # each resent SYN overflowed once more
    assert sum(d["dropped"] for d in drops) == delta, drops
    for d in drops:
        assert (d["laddr"], d["lport"]) == ("127.0.0.1", server.port)
        assert (d["pid"], d["comm"]) == (server.pid, "nsdropsrv")
