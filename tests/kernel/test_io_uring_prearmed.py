"""Issue 20, first case: io_uring accepts armed BEFORE the tracer started. A long-running
server arms its accepts once, at start (a multishot accept, or single accepts in flight);
the tracer that starts later never sees their submission, only their completions, and must
still report every accept: N connections, N rows with the exact client ports, in every way
a server can arm them (tests/support/uring/accept_server.c, prearmed-MODE)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from tests.kernel.test_io_uring import assert_exact, kernel, method_sees_io_uring
from tests.support.servers import connect
from tests.support.tracer import start_tracer
from tests.support.uring import UringUnsupported, start_uring_server

PREARMED_MODES = ("multishot", "single", "direct-alloc", "direct-slot", "async", "sqpoll")
N = 40  # <= the server's 64-entry SQ ring, where the single accepts wait together
HOST = "127.0.0.1"
# io-wq (IOSQE_ASYNC) and SQPOLL arm the accept in another thread after submit returns:
# give them time to, so the tracer really starts after the arming.
ARM_SETTLE_S = 0.5


@pytest.mark.parametrize("mode", PREARMED_MODES)
def test_accepts_armed_before_the_tracer_started_are_each_reported(mode: str) -> None:
    if not method_sees_io_uring():
        pytest.skip("this kernel's tracepoint method does not see io_uring accepts (--check)")
    if mode in ("async", "sqpoll") and kernel() < (5, 12):
        pytest.skip("before 5.12 io-wq and SQPOLL are kernel threads, not the server's")
    if mode == "multishot" and kernel() < (5, 19):
        # Armed before the connects, the refusal (-EINVAL in the CQE) only comes later.
        pytest.skip("multishot accept (IORING_ACCEPT_MULTISHOT) is 5.19+")
    try:
        server = start_uring_server(mode, 4, HOST, N, prearmed=True)
    except UringUnsupported as exc:
        pytest.skip(f"kernel {os.uname().release} has no io_uring {mode} accept: {exc}")
    clients: list[socket.socket] = []
    run = None
    try:
        server.wait_armed()
        time.sleep(ARM_SETTLE_S)
        run = start_tracer("-p", str(server.pid))
        clients = [connect(HOST, server.port, socket.AF_INET) for _ in range(N)]
        server.wait_accepted()
        run.wait_for_lines(N)
        run.stop()
        events = run.events([server.pid])
        assert (mode, len(events)) == (mode, N), f"{len(events)} rows of {N} accepts"
        assert_exact(events, server, clients)
    finally:
        if run is not None:
            run.stop()
        server.close()
        for client in clients:
            client.close()
