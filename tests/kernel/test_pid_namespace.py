"""Issue 14 item 3 (second half): a tracer in a PID namespace with its own /proc matches -p
and shows PIDs and TIDs as that namespace numbers them (before: 0 of 3 rows with -p, and
host PIDs that do not exist there). Processes outside the namespace have no PID there:
their accepts are not shown, and their number is said at exit.

Each scenario runs inside `unshare --pid --fork --mount-proc` (tracer, servers and clients
in the same new namespace, the network namespace shared with the host); the test outside
reads back what the scenario saw as JSON."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.servers import connect, start_server
from tests.support.tracer import start_tracer

REPO = Path(__file__).resolve().parents[2]


def in_new_pid_namespace(scenario: str, *args: object) -> dict:
    """Run scenario(*args) of this module in a new PID namespace with its own /proc."""
    code = (f"import json; from tests.kernel.test_pid_namespace import {scenario}; "
            f"print('RESULT ' + json.dumps({scenario}(*{args!r})))")
    result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                             "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, f"{result.stdout}\n{result.stderr}"
    return json.loads(lines[-1][len("RESULT "):])


def _namespace() -> str:
    return os.readlink("/proc/self/ns/pid")  # pid:[INODE]


def _accept(server, n: int) -> list:
    clients = [connect("127.0.0.1", server.port) for _ in range(n)]
    server.accept(n)
    return clients


# -- scenarios (run inside the namespace) --

def pid_filter_scenario() -> dict:
    with start_server(comm="ns-wanted") as wanted, start_server(comm="ns-other") as other:
        run = start_tracer("-p", str(wanted.pid))
        try:
            clients = _accept(wanted, 3) + _accept(other, 2)
        finally:
            run.stop()
        for client in clients:
            client.close()
        return {"namespace": _namespace(), "wanted": wanted.pid, "other": other.pid,
                "events": run.events(), "stderr": run.stderr}


def _wait_until_accepted(port: int, timeout: float = 20) -> None:
    """Until the listener on 127.0.0.1:port has nothing queued (/proc/net/tcp: a LISTEN
    socket's rx_queue is its accept queue); a slow guest may take seconds."""
    local = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as table:
            queued = [int(fields[4].split(":")[1], 16) for fields in map(str.split, table)
                      if fields[1] == local and fields[3] == "0A"]
        if queued and not any(queued):
            time.sleep(0.2)  # and the accept() has returned through the traced path
            return
        time.sleep(0.05)
    raise AssertionError(f"the listener on port {port} did not drain its queue")


def outside_scenario(host_port: int, host_accepts: int) -> dict:
    """The host's server (outside) accepts host_accepts connections made from here."""
    with start_server(comm="ns-inside") as inside:
        run = start_tracer("-P", f"{inside.port},{host_port}")
        try:
            clients = _accept(inside, 2)
            clients += [connect("127.0.0.1", host_port) for _ in range(host_accepts)]
            _wait_until_accepted(host_port)  # the host server accepts them in its own time
        finally:
            run.stop()
        for client in clients:
            client.close()
        return {"namespace": _namespace(), "inside": inside.pid, "events": run.events(),
                "stderr": run.stderr}


def nested_scenario() -> dict:
    """A server in a namespace nested below the tracer's (a container in a container):
    bpf_get_ns_current_pid_tgid does not answer for it; it still has a PID here."""
    with start_server(comm="ns-nested", prefix=("unshare", "--pid", "--fork")) as nested:
        # The server reports its own PID (1, in its namespace); here it is unshare's child.
        with open(f"/proc/{nested.proc.pid}/task/{nested.proc.pid}/children") as children:
            here = int(children.read().split()[0])
        run = start_tracer("-p", str(here))
        try:
            clients = _accept(nested, 3)
        finally:
            run.stop()
        for client in clients:
            client.close()
        return {"namespace": _namespace(), "own_pid": nested.pid, "here": here,
                "events": run.events(), "stderr": run.stderr}


def io_uring_scenario() -> dict:
    """IOSQE_ASYNC io_uring accepts (in an io-wq worker, iou-wrk-N, or in the submitter
    when the worker found no connection yet): PID and TID both as this namespace numbers
    them."""
    from tests.kernel.test_io_uring import serve

    run = start_tracer("-c", "uring-async")
    try:
        server, clients = serve("async", socket.AF_INET, "127.0.0.1", 3)
        threads = sorted(server.threads)  # read in this namespace
        server.close()
    finally:
        run.stop()
    for client in clients:
        client.close()
    return {"server": server.pid, "threads": threads, "events": run.events([server.pid])}


# -- tests (run outside) --

def _notice(namespace: str) -> str:
    return (f"tcpaccept: PIDs are those of pid namespace {namespace} (this /proc's); accepts "
            "by processes outside it have no PID here and are not shown")


def test_pid_filter_matches_and_shows_the_namespace_pids() -> None:
    seen = in_new_pid_namespace("pid_filter_scenario")
    events = seen["events"]
    assert [(e["pid"], e["tid"], e["comm"]) for e in events] == \
        [(seen["wanted"], seen["wanted"], "ns-wanted")] * 3, events
    assert seen["wanted"] != seen["other"]  # the unselected server's accepts stay out
    assert seen["stderr"].splitlines()[0] == _notice(seen["namespace"])


@pytest.mark.method_agnostic  # namespace bookkeeping
def test_accepts_outside_the_namespace_are_not_shown_but_counted() -> None:
    with start_server(comm="host-outside") as host:
        host.accept_async(2)
        seen = in_new_pid_namespace("outside_scenario", host.port, 2)
        assert len(host.collect()) == 2  # the positive control: they did happen
    events = seen["events"]
    assert [(e["pid"], e["comm"]) for e in events] == [(seen["inside"], "ns-inside")] * 2
    namespace = seen["namespace"]
    assert f"tcpaccept: 2 accepts by processes outside pid namespace {namespace} were not " \
        "shown" in seen["stderr"].splitlines(), seen["stderr"]


@pytest.mark.method_agnostic  # namespace bookkeeping
def test_a_nested_namespace_is_numbered_as_the_tracer_sees_it() -> None:
    seen = in_new_pid_namespace("nested_scenario")
    assert seen["own_pid"] == 1 and seen["here"] != 1
    assert [(e["pid"], e["tid"]) for e in seen["events"]] == [(seen["here"], seen["here"])] * 3


def test_io_uring_accepts_show_the_namespace_pid_and_tid() -> None:
    from tests.kernel.test_io_uring import method_sees_io_uring

    if not method_sees_io_uring():
        pytest.skip("this kernel's tracepoint method does not see io_uring accepts (--check)")
    release = tuple(int(part) for part in platform.release().split("-")[0].split(".")[:2])
    if release < (5, 12):
        pytest.skip("before 5.12 io-wq and SQPOLL are kernel threads, not the server's")
    seen = in_new_pid_namespace("io_uring_scenario")
    events = seen["events"]
    assert len(events) == 3, events
    for e in events:
        assert e["pid"] == seen["server"]
        # Which thread ran it is the kernel's choice (io-wq or inline); either way one of
        # the server's, numbered as the namespace numbers it.
        assert e["tid"] in seen["threads"], (e, seen["threads"])


@pytest.mark.method_agnostic  # namespace bookkeeping
def test_the_initial_namespace_prints_no_notice() -> None:
    with start_server(comm="host-plain") as server:
        run = start_tracer("-p", str(server.pid))
        try:
            clients = _accept(server, 1)
        finally:
            run.stop()
        for client in clients:
            client.close()
    assert [e["pid"] for e in run.events()] == [server.pid]
    assert "pid namespace" not in run.stderr
