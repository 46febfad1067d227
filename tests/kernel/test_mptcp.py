"""MPTCP listeners: some runtimes now listen with IPPROTO_MPTCP by default. An accept on an
MPTCP listener is one TCP connection to the operator, whatever the attach method sees
(the tracepoint path gets the MPTCP socket, fexit/kprobe the first TCP subflow)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from tests.support.tracer import start_tracer

IPPROTO_MPTCP = 262


def _mptcp_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    except OSError as exc:
        if exc.errno != errno.EPROTONOSUPPORT:
            raise
    # A kernel without MPTCP has no MPTCP listener to miss: that is a fact about the
    # kernel (Debian's 5.10), reported as a skip with its reason, never as a pass.
    enabled = Path("/proc/sys/net/mptcp/enabled")
    if not enabled.exists():
        pytest.skip("this kernel has no MPTCP (no net.mptcp sysctls)")
    enabled.write_text("1\n")
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    except OSError as exc:
        pytest.skip(f"this kernel refuses MPTCP sockets even with net.mptcp.enabled=1 ({exc})")


def test_mptcp_accepts_are_reported_once_each_with_their_ports() -> None:
    listener = _mptcp_socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    run = start_tracer("-P", str(port))
    peers = []
    try:
        for protocol in (IPPROTO_MPTCP,) * 5 + (socket.IPPROTO_TCP,) * 2:
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM, protocol)
            client.connect(("127.0.0.1", port))
            accepted, peer = listener.accept()
            peers.append(peer[1])
            accepted.close()
            client.close()
    finally:
        run.stop()
        listener.close()
    events = run.events()
    # 5 MPTCP clients and 2 plain TCP clients (MPTCP falls back): 7 rows, one per accept.
    assert sorted(e["rport"] for e in events) == sorted(peers)
    for e in events:
        assert (e["laddr"], e["lport"], e["raddr"], e["family"]) == ("127.0.0.1", port,
                                                                     "127.0.0.1", 4)
        assert e["backlog_max"] == 16  # the listener's queue, read on its TCP subflow
