"""The endpoint's contract with the main loop (issue 17): /healthz, one render per published
state shared by every client, a scrape waits for the next tick's state, clients that hung up
get no work, [::] serves IPv4 and IPv6. Real sockets; the listener table reads a synthetic
map (tests/kernel/test_metrics_storm.py and test_scrape_reads_no_map.py use the kernel's)."""

from __future__ import annotations

import io
import socket
import threading
import time
from typing import Iterator

import pytest

from tcpaccept import metrics
from tcpaccept.aggregate import ListenerKey, ListenerTotals
from tcpaccept.metrics import MetricsSink
from tcpaccept.metrics_server import FRESH_WAIT_S, MetricsServer
from tcpaccept.model import Lost
from tcpaccept.sink import LostNotices
from tests.unit.test_metrics_server import get

A = ListenerKey(netns=1, family=4, laddr="0.0.0.0", lport=80, cgroup_id=0)


class FakeReader:
    def __init__(self) -> None:
        self.reads = 0

    def read_listeners(self, peak_epoch: object = None) -> dict[ListenerKey, ListenerTotals]:
        self.reads += 1
        return {A: ListenerTotals(accepts=self.reads, last_seen_ns=time.monotonic_ns())}

    def expire(self, listeners: dict, now_ns: int, ttl_ns: int) -> list[ListenerKey]:
        return []

    def listeners_overflow(self) -> int:
        return 0


@pytest.fixture
def sink() -> MetricsSink:
    return MetricsSink(FakeReader(), labels=("lport",))  # type: ignore[arg-type]


@pytest.fixture
def server(sink: MetricsSink) -> Iterator[MetricsServer]:
    with MetricsServer("127.0.0.1", 0, sink.registry, source=sink, timeout_s=5) as s:
        yield s


class Loop:
    """The main loop's part: tick every 20 ms on a thread of its own."""

    def __init__(self, sink: MetricsSink) -> None:
        self.sink = sink
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(0.02):
            self.sink.tick(time.monotonic())

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def send_request(port: int, path: str = "/metrics") -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return client


def read_all(client: socket.socket) -> bytes:
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    client.close()
    return b"".join(chunks)


def wait_until(condition: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)
    assert condition(), "timed out"  # type: ignore[operator]


def test_healthz_says_ok_while_the_main_loop_ticks_and_why_not_otherwise(
        sink: MetricsSink, server: MetricsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    before = get(server.port, "/healthz")
    assert (before.status, before.body) == (503, b"the tracer is not attached yet\n")
    loop = Loop(sink)
    try:
        wait_until(lambda: sink.last_tick is not None)
        ok = get(server.port, "/healthz")
        assert (ok.status, ok.body) == (200, b"ok\n")
        assert get(server.port, "/healthz", method="HEAD").status == 200
    finally:
        loop.stop()
    monkeypatch.setattr(metrics, "HEALTHY_TICK_AGE_S", 0.2)
    time.sleep(0.3)
    stalled = get(server.port, "/healthz")
    assert stalled.status == 503
    assert stalled.body.startswith(b"the main loop last ticked ") and \
        stalled.body.count(b"\n") == 1
    assert server.renders == 0  # health never renders the metrics


def test_waiting_scrapes_share_one_render_of_the_next_state(
        sink: MetricsSink, server: MetricsServer) -> None:
    sink.tick(time.monotonic())  # state 1
    clients = [send_request(server.port) for _ in range(8)]
    wait_until(lambda: sink._asked == 2)  # every request waits for the next state
    time.sleep(0.1)
    assert server.renders == 0
    sink.tick(time.monotonic())  # the main loop publishes state 2
    bodies = {read_all(c).split(b"\r\n\r\n", 1)[1] for c in clients}
    assert len(bodies) == 1 and b'tcpaccept_accepts_total{lport="80"} 2.0' in bodies.pop()
    assert server.renders == 1


def test_a_client_that_hung_up_while_waiting_gets_no_render(
        sink: MetricsSink, server: MetricsServer) -> None:
    sink.tick(time.monotonic())
    client = send_request(server.port)
    wait_until(lambda: sink._asked == 2)
    client.close()
    sink.tick(time.monotonic())
    wait_until(lambda: server.open_connections() == 0)
    assert server.renders == 0


def test_without_a_tick_a_scrape_gets_the_latest_state_after_the_fresh_wait(
        sink: MetricsSink, server: MetricsServer) -> None:
    sink.tick(time.monotonic())
    start = time.monotonic()
    response = get(server.port, "/metrics")
    waited = time.monotonic() - start
    assert response.status == 200 and b'{lport="80"} 1.0' in response.body
    assert FRESH_WAIT_S - 0.05 <= waited < FRESH_WAIT_S + 1.0


def test_each_scrape_sees_what_the_kernel_held_after_it_asked(sink: MetricsSink,
                                                              server: MetricsServer) -> None:
    loop = Loop(sink)
    try:
        counts = [get(server.port, "/metrics").body for _ in range(3)]
    finally:
        loop.stop()
    values = [float(body.split(b'tcpaccept_accepts_total{lport="80"} ')[1].split()[0])
              for body in counts]
    assert values == sorted(values) and len(set(values)) == 3  # a fresh read each time


@pytest.mark.parametrize("client", ["127.0.0.1", "::1"])
def test_a_wildcard_ipv6_bind_serves_ipv4_and_ipv6(sink: MetricsSink, client: str) -> None:
    sink.tick(time.monotonic())
    with MetricsServer("::", 0, sink.registry, source=sink) as server:
        sock = socket.create_connection((client, server.port), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 200 OK\r\n")


def test_output_stalls_reach_the_metrics_and_kernel_losses_do_not_twice() -> None:
    forwarded: list[Lost] = []
    notices = LostNotices(io.StringIO(), stalls_to=forwarded.append)
    notices.report(Lost(3, "output stalled"))
    notices.report(Lost(4, "ring buffer"))  # the Tee hands these to the metrics itself
    assert forwarded == [Lost(3, "output stalled")]


class BigBodyReader(FakeReader):
    """Enough listeners for a body the socket buffers cannot take whole (~4.3 MB)."""

    def read_listeners(self, peak_epoch: object = None) -> dict[ListenerKey, ListenerTotals]:
        self.reads += 1
        now = time.monotonic_ns()
        return {ListenerKey(netns=1, family=4, laddr="0.0.0.0", lport=port, cgroup_id=0):
                ListenerTotals(accepts=self.reads, last_seen_ns=now)
                for port in range(1, 4001)}


def unread(port: int) -> socket.socket:
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
    return client


def _closed_by_server(client: socket.socket) -> bool:
    """Its data ends (after what the buffers took) or it was reset: the server let go."""
    client.settimeout(0.5)
    try:
        while chunk := client.recv(1 << 20):
            del chunk
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_clients_that_never_read_cannot_pin_more_than_the_body_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tcpaccept import metrics_server
    sink = MetricsSink(BigBodyReader(), labels=("lport",))  # type: ignore[arg-type]
    monkeypatch.setattr(metrics_server, "MAX_PINNED_BYTES", 10 << 20)  # about 2.3 bodies
    clients: list[socket.socket] = []
    with MetricsServer("127.0.0.1", 0, sink.registry, source=sink, timeout_s=30) as server:
        loop = Loop(sink)
        try:
            for _ in range(6):  # each one asks after the previous state: a body of its own
                clients.append(unread(server.port))
                wait_until(lambda: server.renders == len(clients))
            body_bytes = len(sink.exposition(False))
            assert 4 << 20 < body_bytes < 5 << 20  # so the budget holds two of them
            # The newest client keeps the current body; of the older ones, those whose
            # bodies pass the budget were let go (oldest first).
            open_now = server.open_connections()
            assert 1 <= open_now <= 3, open_now
            assert _closed_by_server(clients[0])
            assert server.renders == 6
        finally:
            loop.stop()
            for client in clients:
                client.close()
