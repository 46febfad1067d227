"""Issue 11 item 2: a connection the client resets while it waits in the accept queue is
still accept()ed (the server gets an fd), and the kernel clears the child socket's own
local port when it closes it. tcpaccept takes LPORT from the listener, so such accepts show
the right LPORT, RADDR and RPORT and their time in the queue, and -P (a kernel-side filter
on LPORT) keeps them."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.tracer import start_tracer

N = 20
COMM = "rstsrv"

# Accepts with accept4(fd, NULL, NULL, 0), as servers that do not ask for the peer address
# do: asking for it (Python's socket.accept) makes the kernel refuse a reset connection
# with ECONNABORTED instead.
SERVER_CODE = textwrap.dedent(
    """
    import ctypes, json, os, socket, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, sys.argv[3].encode(), 0, 0, 0)  # PR_SET_NAME
    family, host = int(sys.argv[1]), sys.argv[2]
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen(128)
    print(json.dumps({"port": s.getsockname()[1], "pid": os.getpid()}), flush=True)
    n = int(sys.stdin.readline())
    fds = []
    for _ in range(n):
        fd = libc.accept4(s.fileno(), None, None, 0)
        fds.append(fd if fd >= 0 else -ctypes.get_errno())
    print(json.dumps(fds), flush=True)
    sys.stdin.readline()
    """
)


def reset_clients(family: int, host: str, port: int, n: int) -> list[tuple[str, int]]:
    """n clients that connect, then close with an RST (SO_LINGER 0); their (addr, port)."""
    ends = []
    for _ in range(n):
        client = socket.socket(family, socket.SOCK_STREAM)
        client.connect((host, port))
        ends.append(client.getsockname()[:2])
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
    return ends


@pytest.mark.parametrize("port_filter", [False, True], ids=["all", "port-filter"])
@pytest.mark.parametrize("family,host", [
    pytest.param(socket.AF_INET, "127.0.0.1", id="ipv4"),
    # The kernel matrix's guests run IPv4 only (minutes per cell under emulation).
    pytest.param(socket.AF_INET6, "::1", id="ipv6", marks=pytest.mark.host_only),
])
def test_accepts_of_reset_connections_show_the_listeners_port(
        family: int, host: str, port_filter: bool) -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER_CODE, str(int(family)), host, COMM],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdin and server.stdout
        hello = json.loads(server.stdout.readline())
        run = start_tracer(*(("-P", str(hello["port"])) if port_filter else ()))
        try:
            clients = reset_clients(family, host, hello["port"], N)
            time.sleep(0.2)  # every RST has reached its child in the accept queue
            server.stdin.write(f"{N}\n")
            server.stdin.flush()
            fds = json.loads(server.stdout.readline())
        finally:
            run.stop()
        # Control: the server really got every reset connection from accept().
        assert all(fd >= 0 for fd in fds), fds
        events = run.events([hello["pid"]])
        assert len(events) == N, events
        assert sorted((e["raddr"], e["rport"]) for e in events) == sorted(clients)
        for e in events:
            assert e["lport"] == hello["port"]
            assert e["laddr"] == host
            assert e["comm"] == COMM
            # Its wait in the queue, though the reset cleared the child's own port: the
            # stamp is found by what the reset leaves (queue_stamps.bpf.h).
            assert e["queue_latency_us"] is not None and e["queue_latency_us"] >= 150_000, e
        if port_filter:
            assert run.events() == events  # -P kept these and nothing else
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
