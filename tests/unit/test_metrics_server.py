"""The metrics endpoint (issue 14 item 5): idle clients time out and cannot starve the
scraper, fds stay bounded, only /metrics and / answer, TLS works with a real certificate.
Real sockets on loopback; the load tests run the server in a child process so that its
CPU time and open fds are its own."""

from __future__ import annotations

import gzip
import http.client
import os
import resource
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from tcpaccept.errors import TcpacceptError
from tcpaccept.metrics_server import MetricsServer, exposure_warning, warn_if_exposed

CLK_TCK = os.sysconf("SC_CLK_TCK")


def registry_with_accepts(count: int = 7) -> CollectorRegistry:
    registry = CollectorRegistry()
    accepts = Counter("tcpaccept_accepts", "accepts", ["lport"], registry=registry)
    accepts.labels("80").inc(count)
    return registry


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    with MetricsServer("127.0.0.1", 0, registry_with_accepts(), timeout_s=1.0) as s:
        yield s


def get(port: int, path: str, method: str = "GET", headers: dict | None = None,
        context: ssl.SSLContext | None = None) -> http.client.HTTPResponse:
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


def test_metrics_path_answers_with_the_registry(server: MetricsServer) -> None:
    response = get(server.port, "/metrics")
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/plain")
    assert b'tcpaccept_accepts_total{lport="80"} 7.0' in response.body


def test_openmetrics_when_the_scraper_asks_for_it(server: MetricsServer) -> None:
    response = get(server.port, "/metrics",
                   headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.getheader("Content-Type").startswith("application/openmetrics-text")
    assert response.body.endswith(b"# EOF\n")


def test_gzip_when_the_scraper_asks_for_it(server: MetricsServer) -> None:
    response = get(server.port, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert response.getheader("Content-Encoding") == "gzip"
    assert b"tcpaccept_accepts_total" in gzip.decompress(response.body)


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/", 200),
    ("GET", "/metrics?x=1", 200),
    ("HEAD", "/metrics", 200),
    ("GET", "/metricsx", 404),
    ("GET", "/favicon.ico", 404),
    ("GET", "/../etc/passwd", 404),
    ("POST", "/metrics", 405),
    ("DELETE", "/", 405),
])
def test_only_metrics_and_root_answer(server: MetricsServer, method: str, path: str,
                                      status: int) -> None:
    response = get(server.port, path, method=method)
    assert response.status == status
    if status != 200:
        assert b"tcpaccept_accepts" not in response.body
    if path == "/" and status == 200:
        assert b'href="/metrics"' in response.body


def test_garbage_and_oversized_requests_are_refused(server: MetricsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"hello\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 9000)
        assert sock.recv(100).startswith(b"HTTP/1.1 431 ")


def test_an_idle_connection_is_closed_after_the_timeout(server: MetricsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # never finishes its request
        start = time.monotonic()
        assert sock.recv(100) == b""  # the server closed it
        waited = time.monotonic() - start
    assert 0.8 <= waited <= 2.0, waited
    assert server.open_connections() == 0


def test_bind_errors_propagate() -> None:
    with MetricsServer("127.0.0.1", 0, registry_with_accepts()) as first, \
            pytest.raises(OSError) as caught:
        MetricsServer("127.0.0.1", first.port, registry_with_accepts())
    assert caught.value.strerror == "Address already in use"


def test_exit_closes_every_socket() -> None:
    before = len(os.listdir("/proc/self/fd"))
    with MetricsServer("127.0.0.1", 0, registry_with_accepts(), timeout_s=30) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        time.sleep(0.2)
        assert server.open_connections() == 5
    for sock in idle:
        assert sock.recv(10) == b""
        sock.close()
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("address,warns", [
    ("0.0.0.0", True), ("::", True), ("127.0.0.1", False), ("::1", False),
    ("10.1.2.3", False),
])
def test_a_wildcard_bind_gets_one_warning_line(address: str, warns: bool) -> None:
    line = exposure_warning(address, 9435)
    assert (line is not None) == warns
    if line is not None:
        assert "\n" not in line and "process names" in line and "9435" in line


def test_warn_if_exposed_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import sys as _sys

    warn_if_exposed("0.0.0.0", 9435, _sys.stderr)
    warn_if_exposed("127.0.0.1", 9435, _sys.stderr)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tcpaccept: warning: --metrics 0.0.0.0:9435")


# -- under load, in a child process --

CHILD = """
import resource, sys
sys.path.insert(0, {src!r})
from prometheus_client import CollectorRegistry, Counter
from tcpaccept.metrics_server import MetricsServer
if {nofile}:
    resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))
registry = CollectorRegistry()
Counter("tcpaccept_accepts", "accepts", registry=registry).inc(3)
with MetricsServer("127.0.0.1", 0, registry, timeout_s=30) as server:
    print(server.port, flush=True)
    sys.stdin.read()
"""


def start_child(nofile: int = 0) -> tuple[subprocess.Popen, int]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(src=src, nofile=nofile)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def hold_idle_connections(port: int, n: int) -> list[socket.socket]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 200), hard))
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def timed_scrape(port: int) -> float:
    start = time.monotonic()
    response = get(port, "/metrics")
    assert response.status == 200 and b"tcpaccept_accepts_total 3.0" in response.body
    return time.monotonic() - start


@pytest.mark.parametrize("nofile", [0, 40], ids=["fds-to-spare", "fd-limit-reached"])
def test_a_thousand_idle_connections_cannot_starve_scrapes_or_burn_cpu(nofile: int) -> None:
    proc, port = start_child(nofile)
    idle: list[socket.socket] = []
    try:
        idle = hold_idle_connections(port, 1000)
        time.sleep(0.5)  # let the server take the whole burst in
        fds = open_fds(proc.pid)
        cpu_before = cpu_seconds(proc.pid)
        time.sleep(2.0)
        idle_cpu = cpu_seconds(proc.pid) - cpu_before
        scrapes = [timed_scrape(port) for _ in range(5)]
        print(f"\nnofile={nofile or 'default'}: 1000 idle connections held, server fds={fds}, "
              f"CPU over 2 s idle={idle_cpu:.3f} s, scrape times={max(scrapes) * 1000:.1f} ms max")
        assert fds <= 64 + 16, fds
        assert idle_cpu <= 0.05, f"the server used {idle_cpu:.2f} s of CPU while idle"
        assert max(scrapes) < 1.0, scrapes
        # the clients the server let go see an orderly close, not a hang
        closed = sum(1 for sock in idle[:900] if _is_closed(sock))
        assert closed >= 900 - 64, closed
    finally:
        for sock in idle:
            sock.close()
        proc.stdin.close()
        proc.wait(10)


def _is_closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


# -- TLS, with a certificate made by openssl --

@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def test_a_real_tls_scrape(certificate: tuple[str, str]) -> None:
    cert, key = certificate
    client = ssl.create_default_context(cafile=cert)
    with MetricsServer("127.0.0.1", 0, registry_with_accepts(5), cert, key,
                       timeout_s=1.0) as server:
        response = get(server.port, "/metrics", context=client)
        assert response.status == 200
        assert b'tcpaccept_accepts_total{lport="80"} 5.0' in response.body
        assert get(server.port, "/nope", context=client).status == 404
        # A client that never finishes the handshake is one more idle socket, not a block.
        with socket.create_connection(("127.0.0.1", server.port)) as stalled:
            stalled.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, no more
            assert get(server.port, "/metrics", context=client).status == 200
        # Plain HTTP on the TLS port gets nothing readable.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
            plain.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            try:
                answer = plain.recv(4096)
            except ConnectionResetError:
                answer = b""
            assert b"tcpaccept_accepts" not in answer


def test_a_certificate_that_does_not_load_is_one_error(certificate: tuple[str, str],
                                                       tmp_path: Path) -> None:
    cert, _key = certificate
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("nonsense\n")
    with pytest.raises(TcpacceptError) as caught:
        MetricsServer("127.0.0.1", 0, registry_with_accepts(), cert, str(not_a_key))
    assert caught.value.exit_code == 2
    assert "--metrics-tls-key" in str(caught.value) and "\n" not in str(caught.value)


def test_a_registry_that_raises_costs_one_scrape_not_the_server() -> None:
    registry = CollectorRegistry()
    # A lone surrogate (a comm of invalid UTF-8 decoded with surrogateescape) cannot be
    # encoded by the exposition: that scrape fails, the next ones still answer.
    bad = Counter("tcpaccept_accepts", "accepts", ["comm"], registry=registry)
    bad.labels("bad\udcff").inc()
    with MetricsServer("127.0.0.1", 0, registry) as server:
        assert get(server.port, "/metrics").status == 500
        assert server.errors == 1 and "UnicodeEncodeError" in server.last_error
        registry.unregister(bad)
        assert get(server.port, "/metrics").status == 200
