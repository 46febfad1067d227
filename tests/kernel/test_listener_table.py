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
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tcpaccept.listeners import ListenerWatch
from tests.kernel.test_metrics import _samples
from tests.kernel.test_privileges import as_nobody
from tests.support import netns as netns_support
from tests.support.child import Child, free_port
from tests.support.netns import NetNamespace
from tests.support.servers import Server, start_server
from tests.support.tracer import BANNER, start_tracer

pytestmark = pytest.mark.method_agnostic  # --probe tracepoint; the drops do not depend on it


@pytest.fixture
def before() -> Iterator[NetNamespace]:
    yield from netns_support.create("tcpa-lt-before")


@pytest.fixture
def after() -> Iterator[NetNamespace]:
    yield from netns_support.create("tcpa-lt-after")


# The least-privilege identity needs this host's set-up (setpriv users, memlock accounting
# from 5.11): host only, like test_privileges. Root runs the same checks on every kernel.
IDENTITIES = [pytest.param("nobody", marks=pytest.mark.host_only), "root"]


def _agent(*args: str, identity: str = "nobody") -> Child:
    """tcpaccept in a fresh network namespace: as uid 65534 with BPF + PERFMON, or as root."""
    prefix = as_nobody(["bpf", "perfmon"]) if identity == "nobody" else []
    argv = ["unshare", "--net", *prefix, sys.executable, "-m",
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


@pytest.mark.parametrize("identity", IDENTITIES)
def test_bpf_and_perfmon_see_drops_of_every_namespace_with_their_owners(
        before: NetNamespace, after: NetNamespace, identity: str) -> None:
    with start_server(backlog=1, comm="ltbefore", netns=before.name) as early:
        early_base = before.listen_overflows()[0]
        agent = _agent("--drops", "-j", identity=identity)
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


def test_an_unusable_iterator_falls_back_to_sock_diag_in_one_line(
        before: NetNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a kernel without task_file iterators (or the fields they read) gets: one line,
    and drops still counted exactly, through sock_diag (as root here). The object the
    kernel cannot use is stood in for by a file that is not one."""
    monkeypatch.setenv("TCPACCEPT_LISTENERS_OBJECT", "/bin/true")
    with start_server(backlog=1, comm="ltfallback", netns=before.name) as server:
        run = start_tracer("--drops", "-P", str(server.port))
        try:
            delta = before.flood(server.port, 20, backlog=1)
        finally:
            run.stop()
    said = [line for line in run.stderr.splitlines() if "sock_diag" in line]
    assert len(said) == 1 and "listener iterator is not usable" in said[0], run.stderr
    drops = [o for o in map(json.loads, run.lines) if o["event"] == "drop"]
    assert delta >= 18 and sum(d["dropped"] for d in drops) == delta, drops


def test_outside_the_host_pid_namespace_one_line_says_what_is_not_seen() -> None:
    """At start (--drops) and in --check, in a pid namespace of its own."""
    in_pid_ns = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m",
                 "tcpaccept.cli", "--probe", "tracepoint"]
    check = subprocess.run([*in_pid_ns, "--check"], capture_output=True, text=True,
                           timeout=120)
    (line,) = [x for x in check.stdout.splitlines() if x.startswith("listener table:")]
    assert "usable" in line and "outside the host pid namespace" in line, check.stdout
    traced = subprocess.run([*in_pid_ns, "--drops", "-j", "-d", "1"], capture_output=True,
                            text=True, timeout=120)
    assert traced.returncode == 0, traced.stderr
    warned = [x for x in traced.stderr.splitlines() if "outside the host pid namespace" in x]
    assert len(warned) == 1 and warned[0].startswith("tcpaccept: warning: listener table:")
    host = subprocess.run([sys.executable, "-m", "tcpaccept.cli", "--probe", "tracepoint",
                           "--check"], capture_output=True, text=True, timeout=120)
    assert "listener table: usable (task_file iterator)\n" in host.stdout  # the control


_OWN_LISTENER = """
import json, os, socket
from tcpaccept.listeners import ListenerWatch
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(1)
with ListenerWatch() as watch:
    state = watch.refresh().listeners[os.fstat(sock.fileno()).st_ino]
print(json.dumps([os.getpid(), state.pid, state.comm]))
"""


def test_owner_pids_are_numbered_by_the_readers_pid_namespace() -> None:
    """A reader in a pid namespace of its own (pid 1 there) reports its own listener's
    owner as pid 1, not as the host numbers it."""
    out = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                          "-c", _OWN_LISTENER], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    own_pid, owner_pid, comm = json.loads(out)
    assert (own_pid, owner_pid) == (1, 1) and comm


def _table_entry(sock: socket.socket) -> tuple[int, int, int]:
    """(syn_queue, backlog, backlog_max) of this listener in a fresh read."""
    with ListenerWatch() as watch:
        state = watch.refresh().listeners[os.fstat(sock.fileno()).st_ino]
    return state.syn_queue, state.backlog, state.backlog_max


def test_syn_queue_and_accept_queue_are_read_from_the_listener(
        before: NetNamespace) -> None:
    """TCP_DEFER_ACCEPT keeps a completed handshake in the SYN queue until data comes: three
    silent clients are three SYN-queue entries; once they write, three queued accepts."""
    def make() -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        return sock

    server = before.run(make)
    port = server.getsockname()[1]
    clients = before.run(lambda: [socket.create_connection(("127.0.0.1", port))
                                  for _ in range(3)])
    try:
        assert _table_entry(server) == (3, 0, 8)
        for client in clients:
            client.sendall(b"x")
        deadline = time.monotonic() + 5
        while _table_entry(server)[1] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _table_entry(server) == (0, 3, 8)
    finally:
        for client in clients:
            client.close()
        server.close()


@pytest.mark.host_only  # least privilege: this host's set-up, as test_privileges
def test_check_as_nobody_with_bpf_and_perfmon_finds_the_table_usable() -> None:
    check = subprocess.run([*as_nobody(["bpf", "perfmon"]), sys.executable, "-m",
                            "tcpaccept.cli", "--probe", "tracepoint", "--check", "-v"],
                           capture_output=True, text=True, timeout=120)
    (line,) = [x for x in check.stdout.splitlines() if x.startswith("listener table:")]
    assert line.startswith("listener table: usable (task_file iterator), "), check.stdout
    assert " listeners, one read " in line and " ms, read every " in line


QUEUE_SERIES = ("tcpaccept_listen_backlog", "tcpaccept_listen_backlog_max",
                "tcpaccept_listen_syn_queue", "tcpaccept_listen_drops_total")


def _listener_series(metrics_port: int, labels: tuple, settled: Callable[[list], bool],
                     timeout: float = 20) -> list[float]:
    """The listener's queue series in a scrape once ``settled`` holds for them (the table is
    read on its own schedule: at least every second here)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = _samples(metrics_port)
        values = [samples.get((name, labels)) for name in QUEUE_SERIES]
        if settled(values) or time.monotonic() > deadline:
            return values
        time.sleep(0.2)


def test_metrics_export_a_hung_listener_of_another_namespace_from_its_first_read(
        before: NetNamespace) -> None:
    """Issue 18 item 2: a listener that never accepts, in a namespace of the test's own, is
    in --metrics before anything happens to it (drops at 0: the flood is an increase()),
    and after the flood its drops equal the namespace's ListenOverflows delta and its
    backlog what ss says of its accept queue."""
    metrics_port = free_port()
    with start_server(backlog=1, comm="lthung", netns=before.name) as server:
        run = start_tracer("--metrics", f"127.0.0.1:{metrics_port}", "--quiet")
        try:
            labels = (("container", ""), ("laddr", "127.0.0.1"), ("lport", str(server.port)),
                      ("namespace", ""), ("netns", str(before.inode)), ("pod", ""))
            quiet = _listener_series(metrics_port, labels, lambda v: None not in v)
            delta = before.flood(server.port, 20, backlog=1)
            queued = before.accept_queue(server.port)
            flooded = _listener_series(metrics_port, labels,
                                       lambda v: v[3] == delta and v[2] == 0)
            accepts = _samples(metrics_port).get(("tcpaccept_accepts_total", labels))
        finally:
            run.stop()
    assert "Traceback" not in run.stderr, run.stderr
    assert quiet == [0, 1, 0, 0], quiet  # backlog, backlog max, SYN queue, drops
    assert delta >= 18, delta  # the flood really overflowed (positive control)
    assert flooded == [queued, 1, 0, delta], (flooded, queued, delta)
    assert queued == 2 and accepts is None  # full (backlog + 1) and never accepted
