"""Issue 17: scrapes never act. The main loop's tick reads the kernel's aggregation maps and
publishes a state; the scrape thread renders that state only. Proved by closing the tracer
(every map fd of it) after the tick: the scrape still answers, with the exact counts."""

from __future__ import annotations

import time

import pytest

from tcpaccept.aggregate import AggregateReader
from tcpaccept.config import Config
from tcpaccept.metrics import MetricsSink
from tcpaccept.metrics_server import MetricsServer
from tcpaccept.tracer import Tracer
from tests.support.accept_load import accept_server, connect_many, samples
from tests.support.tracer import PROBE
from tests.unit.test_metrics_server import get

pytestmark = [pytest.mark.method_agnostic]  # what the scrape thread reads, not how accepts arrive

AGGREGATION_MAPS = ("listener_stats", "remote_counts", "aggregate_counters", "aggregate_epoch")


def is_bpf_map(fd: int) -> bool:
    try:
        with open(f"/proc/self/fdinfo/{fd}") as fdinfo:
            return "map_type:" in fdinfo.read()
    except OSError:
        return False


def test_the_scrape_answers_from_the_published_state_with_every_map_closed() -> None:
    n = 25
    with accept_server(n) as server:
        tracer = Tracer(Config(probe=PROBE, lports=frozenset({server.port}),
                               queue_latency=True), aggregate=True, emit_records=False)
        try:
            tracer.start()
            sink = MetricsSink(AggregateReader(tracer), labels=("lport",))
            server.go()
            connect_many(server.port, n)
            server.wait_done()
            time.sleep(0.1)
            sink.tick(time.monotonic())  # the main loop's tick: the only map read
            fds = [tracer.bpf_map(name).fd for name in AGGREGATION_MAPS]
            assert all(is_bpf_map(fd) for fd in fds)
        finally:
            tracer.close()
        assert not any(is_bpf_map(fd) for fd in fds), "the tracer left a map open"
        with MetricsServer("127.0.0.1", 0, sink.registry, source=sink) as metrics:
            response = get(metrics.port, "/metrics")  # asks for a tick that never comes
            errors = metrics.errors
    assert (response.status, errors) == (200, 0)
    assert samples(response.body, "tcpaccept_accepts_total", lport=str(server.port)) == [
        ({"lport": str(server.port)}, n)]
