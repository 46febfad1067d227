"""Issue 11 item 1: accepts made through io_uring are reported exactly, in every way a
server can make them (single, multishot, direct descriptors, io-wq, SQPOLL, a full CQ ring),
IPv4 and IPv6, by every attach method: fexit/kprobe through inet_csk_accept, the tracepoint
method through io_uring's own tracepoints (kernels >= 6.2; --check says so). The servers are
liburing C programs built by the tests (tests/support/uring)."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.support.child import free_port
from tests.support.servers import connect, start_server
from tests.support.tracer import attach_method, start_tracer
from tests.support.uring import MODES, UringServer, UringUnsupported, start_uring_server
from tests.support.uring import binary as uring_binary

# IPv6 runs on the host only: the kernel matrix (tests/vm) is about kernels and attach
# methods, and each guest cell costs minutes under emulation.
FAMILIES = [pytest.param(socket.AF_INET, "127.0.0.1", id="ipv4"),
            pytest.param(socket.AF_INET6, "::1", id="ipv6", marks=pytest.mark.host_only)]
# Modes whose accepts run in a helper thread of the server (iou-wrk-N, iou-sqp-N) from 5.12.
HELPER_THREAD_MODES = ("async", "sqpoll")
DIRECT_MODES = ("direct-alloc", "direct-slot")
OVERFLOW_CQ_ENTRIES = 4  # accept_server.c


@functools.lru_cache(maxsize=1)
def check_output() -> str:
    """--check, once per session: it loads every method (seconds in an emulated guest)."""
    return subprocess.run([sys.executable, "-m", "tcpaccept.cli", "--check"],
                          capture_output=True, text=True, check=True).stdout


def io_uring_line() -> str:
    lines = [line for line in check_output().splitlines()
             if line.startswith("io_uring accepts: ")]
    assert len(lines) == 1, "--check must say whether io_uring accepts are seen"
    return lines[0]


def kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()))


def method_sees_io_uring() -> bool:
    """fexit/kprobe always (inet_csk_accept); the tracepoint method where --check says."""
    if attach_method() in ("fexit", "kprobe"):
        return True
    return io_uring_line().startswith("io_uring accepts: yes")


def family_number(family: int) -> int:
    return 4 if family == socket.AF_INET else 6


def serve(mode: str, family: int, host: str, n: int,
          port: int = 0) -> tuple[UringServer, list[socket.socket]]:
    """A server in `mode` that has accepted n real connections; returns it and the clients."""
    if mode in HELPER_THREAD_MODES and kernel() < (5, 12):
        pytest.skip("before 5.12 io-wq and SQPOLL are kernel threads, not the server's")
    try:
        server = start_uring_server(mode, family_number(family), host, n, port=port)
    except UringUnsupported as exc:
        pytest.skip(f"kernel {os.uname().release} has no io_uring {mode} accept: {exc}")
    try:
        if mode == "overflow":
            server.wait_armed()
        try:
            clients = [connect(host, server.port, family) for _ in range(n)]
        except (ConnectionResetError, ConnectionRefusedError) as refused:
            # A server whose kernel refused the mode exits at once, resetting connections
            # still in its queue (5.10 has no multishot accept): its last line says why.
            try:
                server.proc.wait(5)
            except subprocess.TimeoutExpired:
                raise refused from None
            server.wait_accepted()  # UringUnsupported, or the error it printed
            raise
        if mode == "overflow":
            time.sleep(0.3)  # every completion posted while the server is not reaping
            server.reap()
        result = server.wait_accepted()
        if mode == "overflow":
            # Control: the kernel really kept completions in its overflow list.
            assert result["overflowed"], result
    except UringUnsupported as exc:
        server.close()
        pytest.skip(f"kernel {os.uname().release} has no io_uring {mode} accept: {exc}")
    except BaseException:
        server.close()
        raise
    return server, clients


def assert_exact(events: list[dict], server: UringServer, clients: list[socket.socket]) -> None:
    """One row per accepted connection, every field as the sockets and the server say."""
    assert len(events) == len(clients), events
    assert sorted(e["rport"] for e in events) == sorted(c.getsockname()[1] for c in clients)
    for e in events:
        assert e["pid"] == server.pid
        assert e["comm"] == server.comm  # the process's name, not iou-wrk-N / iou-sqp-N
        assert e["family"] == server.family
        assert e["raddr"] == server.host and e["laddr"] == server.host
        assert e["lport"] == server.port
        assert e["netns"] == os.stat("/proc/self/ns/net").st_ino
        # A thread of the server. SQPOLL's thread submits every request. An IOSQE_ASYNC
        # accept runs in an io-wq worker, unless it found no connection there: then it
        # waits on poll and completes in the submitter (tid == pid); both are legitimate.
        assert e["tid"] in server.threads, (e, server.threads)
        if server.mode == "sqpoll":
            assert e["tid"] != e["pid"], "the SQPOLL thread submitted the accept"
        if e["fd"] is not None:  # the tracepoint method knows descriptors
            assert server.mode not in DIRECT_MODES, "a direct descriptor is not an fd"
    fds = [e["fd"] for e in events if e["fd"] is not None]
    if fds:
        assert sorted(fds) == sorted(server.result["fds"])


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    uring_binary("accept_server")  # once, before any tracer runs: a failed build fails loudly


@pytest.mark.parametrize("family,host", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_io_uring_accepts_are_reported_exactly(mode: str, family: int, host: str) -> None:
    n = 3 * OVERFLOW_CQ_ENTRIES if mode == "overflow" else 6
    run = start_tracer("-c", f"uring-{mode}"[:15])  # the server's name: not the machine's
    try:
        server, clients = serve(mode, family, host, n)
        # Teardown while tracing: a still-armed multishot accept is cancelled (negative
        # res, from a kworker) and must not become a row.
        server.close()
    finally:
        run.stop()
    events = run.events([server.pid])
    if method_sees_io_uring():
        assert_exact(events, server, clients)
    else:
        # Older kernels, tracepoint method: --check said "no"; nothing invented either.
        assert events == []
    for client in clients:
        client.close()


def test_check_says_whether_io_uring_accepts_are_seen() -> None:
    line = io_uring_line()
    events = "/sys/kernel/tracing/events/io_uring"
    if kernel() < (6, 2):
        assert line.startswith("io_uring accepts: no (kernel "), line
    elif os.path.isdir(f"{events}/io_uring_submit_req"):
        assert line == "io_uring accepts: yes (tracepoint method, io_uring_complete)", line
    elif os.path.isdir(f"{events}/io_uring_complete"):  # 6.2: no submit tracepoint yet
        assert line.startswith("io_uring accepts: yes (single-shot only"), line
    else:
        assert line.startswith("io_uring accepts: no ("), line


def test_no_io_uring_turns_only_the_tracepoint_hook_off() -> None:
    """--no-io-uring: the tracepoint method loads no io_uring program (no rows, no cost);
    fexit/kprobe see io_uring accepts regardless. A syscall accept in the same run is the
    control that the tracer was alive."""
    run = start_tracer("--no-io-uring")
    try:
        server, clients = serve("single", socket.AF_INET, "127.0.0.1", 3)
        server.close()
        with start_server(comm="control") as control:
            control_client = connect("127.0.0.1", control.port)
            control.accept(1)
    finally:
        run.stop()
    assert len(run.events([control.pid])) == 1
    events = run.events([server.pid])
    if attach_method() == "tracepoint":
        assert events == []
    else:
        assert_exact(events, server, clients)
    for client in (*clients, control_client):
        client.close()


def test_comm_and_port_filters_match_io_wq_accepts() -> None:
    """-c names the process even when its io-wq worker (iou-wrk-N) accepted, -P the
    listener's port; both filters run in the kernel. A syscall accept on another port by
    another process is the control that they filter at all."""
    if not method_sees_io_uring():
        pytest.skip("this kernel's tracepoint method does not see io_uring accepts (--check)")
    port = free_port()
    run = start_tracer("-c", "uring-async", "-P", str(port))
    try:
        server, clients = serve("async", socket.AF_INET, "127.0.0.1", 4, port)
        with start_server(comm="control") as control:
            control_client = connect("127.0.0.1", control.port)
            control.accept(1)
        server.close()
    finally:
        run.stop()
    assert_exact(run.events([server.pid]), server, clients)
    assert run.events() == run.events([server.pid])
    for client in (*clients, control_client):
        client.close()
