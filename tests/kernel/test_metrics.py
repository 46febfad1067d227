"""--metrics: Prometheus counters that agree exactly with the traffic."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.child import free_port
from tests.support.servers import connect, start_server
from tests.support.tracer import start_tracer, tcpaccept_command


def _samples(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def test_metrics_count_accepts_and_latency_per_listener() -> None:
    metrics_port = free_port()
    with start_server(comm="metricsrv") as server:
        run = start_tracer("--metrics", f"127.0.0.1:{metrics_port}", "-P", str(server.port))
        clients = [connect("127.0.0.1", server.port) for _ in range(7)]
        server.accept(7)
        run.wait_for_lines(7)
        samples = _samples(metrics_port)
        run.stop()
    # The listener's identity (issue 13 item 5): no comm unless asked for, netns added.
    netns = str(os.stat("/proc/self/ns/net").st_ino)
    labels = (("container", ""), ("laddr", "127.0.0.1"), ("lport", str(server.port)),
              ("namespace", ""), ("netns", netns), ("pod", ""))
    assert samples[("tcpaccept_accepts_total", labels)] == 7
    assert samples[("tcpaccept_queue_latency_seconds_count", labels)] == 7
    assert samples[("tcpaccept_listen_backlog_max", labels)] == 128
    assert samples[("tcpaccept_lost_events_total", (("reason", "ring_buffer"),))] == 0
    assert len(run.events([server.pid])) == 7  # the normal output is unchanged
    for c in clients:
        c.close()


@pytest.mark.method_agnostic  # fails before any load
def test_metrics_port_in_use_is_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run(tcpaccept_command("--metrics", f"127.0.0.1:{port}"),
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"tcpaccept: --metrics 127.0.0.1:{port}: cannot listen: Address already in use"
    ]
