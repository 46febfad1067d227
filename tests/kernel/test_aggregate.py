"""In-kernel aggregation (issue 12 item 1): exact counts from the maps, per listening socket,
no ring-buffer record when nothing prints, expiry of idle listeners, a bounded remotes map
that says when it evicts."""

from __future__ import annotations

import json
import os
import time

from prometheus_client import generate_latest

from tcpaccept.aggregate import AggregateReader
from tcpaccept.config import Config
from tcpaccept.metrics import MetricsSink
from tcpaccept.tracer import Tracer
from tests.support.accept_load import accept_server, connect_many, samples, scrape
from tests.support.child import free_port
from tests.support.tracer import PROBE, start_tracer

NETNS = str(os.stat("/proc/self/ns/net").st_ino)


def test_metrics_only_counts_every_accept_exactly() -> None:
    n = 3000
    metrics_port = free_port()
    with accept_server(n) as server:
        run = start_tracer("--metrics", f"127.0.0.1:{metrics_port}", "--quiet",
                           "-P", str(server.port))
        try:
            server.go()
            connect_many(server.port, n, destinations=50)
            server.wait_done()
            body = scrape(metrics_port)
        finally:
            run.stop()
    lport = str(server.port)
    assert samples(body, "tcpaccept_accepts_total", lport=lport) == [
        ({"laddr": "0.0.0.0", "lport": lport, "netns": NETNS, "container": "",
          "namespace": "", "pod": ""}, n)]
    ((_, latencies),) = samples(body, "tcpaccept_queue_latency_seconds_count", lport=lport)
    assert latencies == n
    ((_, below_inf),) = samples(body, "tcpaccept_queue_latency_seconds_bucket", lport=lport,
                                le="+Inf")
    assert below_inf == n
    ((_, backlog_max),) = samples(body, "tcpaccept_listen_backlog_max", lport=lport)
    assert backlog_max == 4096
    assert samples(body, "tcpaccept_aggregation_overflow_total", map="listener_stats") == [
        ({"map": "listener_stats"}, 0)]
    assert run.stdout == ""


def test_lines_and_metrics_together_print_every_accept_and_count_it() -> None:
    n = 200
    metrics_port = free_port()
    with accept_server(n, host="127.0.0.1") as server:
        run = start_tracer("--metrics", f"127.0.0.1:{metrics_port}", "-P", str(server.port))
        try:
            server.go()
            connect_many(server.port, n, host="127.0.0.1")
            server.wait_done()
            run.wait_for_lines(n)
            body = scrape(metrics_port)
        finally:
            run.stop()
    assert len(run.events([server.pid])) == n
    ((labels, count),) = samples(body, "tcpaccept_accepts_total", lport=str(server.port))
    assert (labels["laddr"], count) == ("127.0.0.1", n)


def _in_process_tracer(port: int, emit_records: bool) -> Tracer:
    return Tracer(Config(probe=PROBE, lports=frozenset({port}), queue_latency=True),
                  aggregate=True, emit_records=emit_records)


def test_no_ring_buffer_record_when_nothing_prints_lines() -> None:
    n = 100
    with accept_server(n) as server, _in_process_tracer(server.port, False) as tracer:
        reader = AggregateReader(tracer)
        server.go()
        connect_many(server.port, n, destinations=10)
        server.wait_done()
        time.sleep(0.1)
        records = tracer.poll(100)
        listeners = {k: t for k, t in reader.read_listeners().items() if k.lport == server.port}
    assert records == []
    ((key, totals),) = listeners.items()
    assert (key.laddr, key.family, totals.accepts, totals.latency_count) == ("0.0.0.0", 4, n, n)
    assert totals.pid == server.pid and totals.comm == "loadsrv"


def test_idle_listener_series_expire_and_its_counter_restarts() -> None:
    with accept_server(5) as server, _in_process_tracer(server.port, False) as tracer:
        sink = MetricsSink(AggregateReader(tracer), labels=("laddr", "lport"), ttl_s=1.0)
        server.go()
        connect_many(server.port, 3)
        time.sleep(0.3)
        first = generate_latest(sink.registry)
        time.sleep(1.5)  # idle for longer than the TTL
        expired = generate_latest(sink.registry)
        connect_many(server.port, 2)
        server.wait_done()
        again = generate_latest(sink.registry)
        left = [k for k in sink.aggregates.read_listeners() if k.lport == server.port]
    lport = str(server.port)
    assert [v for _, v in samples(first, "tcpaccept_accepts_total", lport=lport)] == [3]
    assert samples(expired, "tcpaccept_accepts_total", lport=lport) == []
    assert [v for _, v in samples(again, "tcpaccept_accepts_total", lport=lport)] == [2]
    assert len(left) == 1


def test_summary_remotes_map_is_bounded_and_says_when_it_evicts() -> None:
    n = 10000  # distinct client addresses, more than remote_counts holds (8192)
    with accept_server(n) as server:
        run = start_tracer("--summary", "600", "-P", str(server.port))
        try:
            server.go()
            connect_many(server.port, n, sources=n)
            server.wait_done()
        finally:
            run.stop()
    objects = [json.loads(line) for line in run.lines]
    (summary,) = [o for o in objects if o["event"] == "summary"]
    (row,) = summary["listeners"]
    assert (row["laddr"], row["lport"], row["accepts"]) == ("0.0.0.0", server.port, n)
    assert row["pid"] == server.pid and row["comm"] == "loadsrv"
    assert summary["remotes_evicted"] >= n - 8192, summary["remotes_evicted"]
    assert len(summary["top_remotes"]) == 5
    assert all(r["raddr"].startswith("127.2.") for r in summary["top_remotes"])
    (histogram,) = [o for o in objects if o["event"] == "histogram"]
    assert sum(b["count"] for b in histogram["buckets"]) == n
