"""Issue 18: listener drops in every network namespace, with owners, from the kernel's
listener table (a task_file iterator), with CAP_BPF + CAP_PERFMON only.

The agent runs as the DaemonSet's agent would: uid 65534, only CAP_BPF + CAP_PERFMON, in a
network namespace of its own (unshare --net) but the host's pid namespace. The listeners it
must see live in two namespaces of the test's own, one made before the agent starts and one
after; each namespace's TcpExt ListenOverflows (read inside it) is what the agent's drop
rows for that namespace must add up to. Neither server ever accepts (a hung server).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Iterator

import pytest

from tcpaccept.listeners import ListenerWatch
from tests.kernel.test_privileges import BANNER, as_nobody
from tests.support import netns as netns_support
from tests.support.child import Child
from tests.support.netns import NetNamespace
from tests.support.servers import Server, start_server

pytestmark = pytest.mark.method_agnostic  # --probe tracepoint; the drops do not depend on it


@pytest.fixture
def before() -> Iterator[NetNamespace]:
    yield from netns_support.create("tcpa-lt-before")


@pytest.fixture
def after() -> Iterator[NetNamespace]:
    yield from netns_support.create("tcpa-lt-after")


def _agent(*args: str) -> Child:
    """tcpaccept as uid 65534 with BPF + PERFMON in a fresh network namespace."""
    argv = ["unshare", "--net", *as_nobody(["bpf", "perfmon"]), sys.executable, "-m",
            "tcpaccept.cli", "--probe", "tracepoint", *args]
    child = Child(argv)
    try:
        child.wait_for_text(BANNER, stream="stderr", timeout=60)
    except BaseException:
        child.stop()
        raise
    return child


def _drops_by_netns(agent: Child) -> dict[int, list[dict]]:
    rows = [json.loads(line) for line in agent.text("stdout").splitlines() if line.strip()]
    by_netns: dict[int, list[dict]] = {}
    for row in rows:
        if row["event"] == "drop":
            by_netns.setdefault(row["netns"], []).append(row)
    return by_netns


def _check(rows: list[dict], server: Server, overflows: int) -> None:
    assert overflows >= 18, overflows  # the flood really overflowed (positive control)
    assert sum(r["dropped"] for r in rows) == overflows, rows
    for r in rows:
        assert (r["laddr"], r["lport"], r["backlog_max"]) == ("127.0.0.1", server.port, 1)
        assert (r["pid"], r["comm"]) == (server.pid, server.comm)


def test_bpf_and_perfmon_see_drops_of_every_namespace_with_their_owners(
        before: NetNamespace, after: NetNamespace) -> None:
    with start_server(backlog=1, comm="ltbefore", netns=before.name) as early:
        early_base = before.listen_overflows()[0]
        agent = _agent("--drops", "-j")
        try:
            assert agent.proc.poll() is None
            with start_server(backlog=1, comm="ltafter", netns=after.name) as late:
                late_base = after.listen_overflows()[0]
                before.flood(early.port, 20, backlog=1)
                after.flood(late.port, 20, backlog=1)
                agent.stop()  # SIGINT: the exit read reports the rest
                early_delta = before.listen_overflows()[0] - early_base
                late_delta = after.listen_overflows()[0] - late_base
        finally:
            agent.stop()
    stderr = agent.text("stderr")
    assert "Traceback" not in stderr and "sock_diag" not in stderr, stderr
    assert "pid namespace" not in stderr, stderr  # the host's: no blind spot to report
    drops = _drops_by_netns(agent)
    _check(drops.get(before.inode, []), early, early_delta)
    _check(drops.get(after.inode, []), late, late_delta)


def test_forked_workers_sharing_a_listener_are_one_entry() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(3)
    port, inode = sock.getsockname()[1], os.fstat(sock.fileno()).st_ino
    worker = os.fork()
    if worker == 0:  # holds the same listener until killed; never returns into pytest
        try:
            while True:
                signal.pause()
        finally:
            os._exit(0)
    try:
        with ListenerWatch() as watch:
            snapshot = watch.refresh()
    finally:
        os.kill(worker, 9)
        os.waitpid(worker, 0)
        sock.close()
    state = snapshot.listeners[inode]
    assert (state.holders, state.pid, state.backlog_max, state.lport, state.laddr) == (
        2, min(os.getpid(), worker), 3, port, "127.0.0.1")
    assert state.comm and state.netns == os.stat("/proc/self/ns/net").st_ino
