"""Issue 2: every passive TCP accept is reported, exactly, through the real kernel."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from tcpaccept import libbpf, probes
from tcpaccept.event import default_object_path
from tests.support.leftovers import program_loaded
from tests.support.servers import connect, start_server
from tests.support.tracer import attach_method, start_tracer

N = 5


def unmapped(address: str) -> str:
    """Python shows IPv4 peers of dual-stack sockets as ::ffff:a.b.c.d; tcpaccept unmaps."""
    return address.removeprefix("::ffff:") if "." in address else address


def _assert_matches(events: list[dict], server, clients, accepted) -> None:
    """Exactly one event per accepted connection, every field as the sockets say."""
    assert len(events) == len(clients), events
    by_port = {e["rport"]: e for e in events}
    for client, (peer_addr, peer_port, new_fd) in zip(clients, accepted):
        local = client.getsockname()
        e = by_port[local[1]]
        assert e["pid"] == server.pid
        assert e["tid"] == server.pid
        assert e["comm"] == server.comm
        assert e["raddr"] == unmapped(local[0]) == unmapped(peer_addr)
        assert e["rport"] == peer_port
        assert e["laddr"] == unmapped(client.getpeername()[0])
        assert e["lport"] == server.port
        assert e["uid"] == os.geteuid()
        assert e["netns"] == os.stat("/proc/self/ns/net").st_ino
        if e["fd"] is not None:  # fexit/kprobe cannot know descriptors
            assert e["fd"] == new_fd
            assert e["listen_fd"] == server.listen_fd


@pytest.mark.parametrize(
    "family,host",
    [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")],
    ids=["ipv4", "ipv6"],
)
def test_each_accept_reports_server_and_client_exactly(family: int, host: str) -> None:
    with start_server(host, family) as server:
        run = start_tracer("-p", str(server.pid))  # its own: not the machine's
        clients = [connect(host, server.port, family) for _ in range(N)]
        accepted = server.accept(N)
        run.stop()
        _assert_matches(run.events([server.pid]), server, clients, accepted)
        for e in run.events([server.pid]):
            assert e["family"] == (4 if family == socket.AF_INET else 6)
        for c in clients:
            c.close()
    assert run.returncode == 0, run.stderr


def test_dual_stack_listener_reports_ipv4_client_as_ipv4() -> None:
    with start_server("::", socket.AF_INET6, v6only=False) as server:
        run = start_tracer("-p", str(server.pid))
        client = connect("127.0.0.1", server.port)
        accepted = server.accept(1)
        run.stop()
        _assert_matches(run.events([server.pid]), server, [client], accepted)
        (event,) = run.events([server.pid])
        assert event["family"] == 4
        assert event["raddr"] == "127.0.0.1" and event["laddr"] == "127.0.0.1"
        client.close()


def test_backlog_is_the_listeners_queue_after_the_accept() -> None:
    with start_server(backlog=8) as server:
        clients = [connect("127.0.0.1", server.port) for _ in range(5)]
        time.sleep(0.2)  # all five handshakes complete: five children queued
        run = start_tracer("-p", str(server.pid))
        server.accept(1)
        run.stop()
        (event,) = run.events([server.pid])
        assert (event["backlog"], event["backlog_max"]) == (4, 8)
        for c in clients:
            c.close()


def test_accept_blocked_before_tracing_started_matches_the_method() -> None:
    """The tracepoint method sees an accept() that was already blocked when tracing
    began (the listening fd comes from the saved registers). fexit and kprobe hook
    inet_csk_accept, which was entered before they attached: by design they miss it."""
    method = attach_method()
    with start_server() as server:
        server.accept_async(1)  # blocks in accept() now, before the tracer exists
        time.sleep(0.3)
        run = start_tracer("-p", str(server.pid))
        client = connect("127.0.0.1", server.port)
        accepted = server.collect()
        # Control: an accept that starts after the tracer is seen by every method.
        later_client = connect("127.0.0.1", server.port)
        later = server.accept(1)
        run.stop()
        events = run.events([server.pid])
        if method == "tracepoint":
            _assert_matches(events, server, [client, later_client], accepted + later)
        else:
            _assert_matches(events, server, [later_client], later)
        client.close()
        later_client.close()


def test_no_event_for_unix_eagain_udp_or_client_connect() -> None:
    with start_server() as server:
        run = start_tracer()
        # A Unix-socket accept.
        unix_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix_listener.bind("\0tcpaccept-test-unix")
        unix_listener.listen(1)
        unix_client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix_client.connect("\0tcpaccept-test-unix")
        unix_listener.accept()[0].close()
        # A non-blocking accept that fails with EAGAIN.
        assert server.nonblocking_accept() == "EAGAIN"
        # UDP traffic.
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.sendto(b"x", udp.getsockname())
        udp.recv(1)
        # This process's connect() (the server never accepts: the active side only).
        client = connect("127.0.0.1", server.port)
        # Control: a real TCP accept in the same run, so a dead tracer cannot pass.
        with start_server(comm="control") as control:
            control_client = connect("127.0.0.1", control.port)
            control_accepted = control.accept(1)
            run.stop()
        assert run.events([server.pid, os.getpid()]) == []
        _assert_matches(run.events([control.pid]), control, [control_client],
                        control_accepted)
        for s in (unix_listener, unix_client, udp, client, control_client):
            s.close()


# The layout; each method's BL is test_backlog_is_the_listeners_queue_after_the_accept.
@pytest.mark.method_agnostic
def test_default_output_is_the_seed_layout() -> None:
    with start_server() as server:
        run = start_tracer("-P", str(server.port), json_mode=False)
        client = connect("127.0.0.1", server.port)
        server.accept(1)
        run.stop()
    lines = run.stdout.splitlines()
    assert lines[0] == "Tracing TCP accepts. Hit Ctrl-C to end."
    assert lines[1] == ("TIME     PID    COMM           RADDR" + " " * 35 + "RPORT LADDR"
                        + " " * 35 + "LPORT BL")
    assert len(lines) == 3, lines
    row = lines[2]
    # Fixed widths: %-8s %-6d %-14s %-39s %-5d %-39s %-5d %d/%d
    assert time.strptime(row[0:8], "%H:%M:%S")
    assert row[9:15].strip() == str(server.pid)
    assert row[16:30].strip() == "acceptsrv"
    assert row[31:70].strip() == "127.0.0.1"
    assert row[71:76].strip() == str(client.getsockname()[1])
    assert row[77:116].strip() == "127.0.0.1"
    assert row[117:122].strip() == str(server.port)
    assert row[123:] == "0/128"
    client.close()


def _object_program_names() -> set[str]:
    """Every program in the BPF object, read from the object itself."""
    with libbpf.BpfObject(str(default_object_path())) as obj:
        return {program.name for program in obj.programs()}


def _program_name(prog_id: int) -> str:
    info = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                                     capture_output=True, text=True, check=True).stdout)
    return info["name"]


def _planned_program_lists() -> list[list[str]]:
    """What the default run loads by the plan: its programs, or its fallback's when the
    verifier refuses the BTF walk (names as the kernel keeps them: 15 bytes, so
    two programs may read the same: a sorted list, not a set)."""
    plan = probes.plan_for(attach_method())
    plans = [plan] + ([plan.fallback] if plan.fallback else [])
    return [sorted(name[:15] for name in p.programs) for p in plans]


# Each method detaches its own links on SIGTERM; SIGINT takes the same path once.
@pytest.mark.parametrize("stop_signal", [
    pytest.param(signal.SIGINT, marks=pytest.mark.method_agnostic), signal.SIGTERM,
], ids=["SIGINT", "SIGTERM"])
def test_signal_detaches_and_leaves_no_program_loaded(stop_signal: int) -> None:
    run = start_tracer()
    loaded = run.programs  # its own, by its fds: other tracers may run on the machine
    names = sorted(_program_name(i)[:15] for i in loaded)
    run.stop(stop_signal)
    assert names in _planned_program_lists(), names
    assert set(names) <= {name[:15] for name in _object_program_names()}
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == "Tracing TCP accepts. Hit Ctrl-C to end."
    # The kernel frees a detached program after an RCU grace period: allow it a moment.
    deadline = time.monotonic() + 5
    while any(map(program_loaded, loaded)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [i for i in loaded if program_loaded(i)]
