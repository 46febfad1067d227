"""In-kernel aggregation (issue 12 item 1): exact counts from the maps, per listening socket,
no ring-buffer record when nothing prints, expiry of idle listeners, a bounded remotes map
that says when it evicts."""

from __future__ import annotations

import json
import mmap
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client import generate_latest

from tcpaccept import aggregate, libbpf
from tcpaccept.aggregate import AggregateReader
from tcpaccept.config import Config
from tcpaccept.metrics import MetricsSink
from tcpaccept.tracer import Tracer
from tests.support import netns
from tests.support.accept_load import accept_server, connect_many, samples, scrape, scrape_when
from tests.support.child import free_port
from tests.support.netns import NetNamespace
from tests.support.servers import connect, start_server
from tests.support.tracer import PROBE, TracerRun, start_tracer

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


def scrape_state(sink: MetricsSink) -> bytes:
    """What a scrape returns after one tick of the main loop (which reads the maps)."""
    sink.refresh()
    return generate_latest(sink.registry)


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


def test_the_preallocated_listener_map_is_one_entry_when_nothing_aggregates() -> None:
    """listener_stats is preallocated (bpf/aggregate.bpf.h): a tracer that only prints
    lines must not pay for 4,096 entries per CPU."""
    with Tracer(Config(probe=PROBE)) as lines_only, \
            _in_process_tracer(free_port(), False) as aggregating:
        sizes = (lines_only.bpf_map("listener_stats").max_entries,
                 aggregating.bpf_map("listener_stats").max_entries)
    assert sizes == (1, aggregate.listener_entries(
        libbpf.possible_cpus(), aggregate.Layouts.of_file(str(aggregating.bpf_object)).stats.size))


BPF_MAP_TYPE_RINGBUF = 27


def _ring_size_and_resident_kb(run: TracerRun) -> tuple[int, int]:
    """The ring buffer this tracer holds (its own fds: max_entries) and what its mappings
    of BPF maps keep resident (its smaps: the ring's data area is mapped twice)."""
    (size,) = [int(info["max_entries"]) for info in run.bpf_fdinfo("map").values()
               if info["map_type"] == str(BPF_MAP_TYPE_RINGBUF)]
    resident, in_map = 0, False
    for line in Path(f"/proc/{run.proc.pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if not first.endswith(":"):  # a mapping's header line, not one of its fields
            in_map = line.endswith("anon_inode:bpf-map")
        elif in_map and first == "Rss:":
            resident += int(line.split()[1])
    return size, resident


@pytest.mark.method_agnostic  # a map's size, set before load
@pytest.mark.parametrize("mode", [("-s", "60"), ("--metrics", "PORT", "--quiet")],
                         ids=["summary", "metrics-only"])
def test_the_ring_buffer_is_one_page_when_nothing_prints_lines(mode: tuple[str, ...]) -> None:
    """Nothing is submitted when no line prints (emit_records off): the default 4 MiB
    ring, mapped twice and all resident, would be 8 MB of the agent's memory for nothing."""
    args = [str(free_port()) if arg == "PORT" else arg for arg in mode]
    with start_tracer(*args) as quiet, start_tracer() as printing:
        quiet_ring, quiet_kb = _ring_size_and_resident_kb(quiet)
        printing_ring, printing_kb = _ring_size_and_resident_kb(printing)
    assert (quiet_ring, printing_ring) == (mmap.PAGESIZE, Config().ring_buffer_bytes)
    # The printing tracer's two views of its 4 MiB ring are resident; the quiet one's not.
    assert printing_kb >= 2 * printing_ring // 1024 > quiet_kb


@pytest.mark.method_agnostic  # a map's bound
def test_idle_listener_series_expire_and_its_counter_restarts() -> None:
    with accept_server(5) as server, _in_process_tracer(server.port, False) as tracer:
        sink = MetricsSink(AggregateReader(tracer), labels=("laddr", "lport"), ttl_s=1.0)
        server.go()
        connect_many(server.port, 3)
        time.sleep(0.3)
        first = scrape_state(sink)
        time.sleep(1.5)  # idle for longer than the TTL
        expired = scrape_state(sink)
        connect_many(server.port, 2)
        server.wait_done()
        again = scrape_state(sink)
        left = [k for k in sink.table.source.read_listeners() if k.lport == server.port]
    lport = str(server.port)
    assert [v for _, v in samples(first, "tcpaccept_accepts_total", lport=lport)] == [3]
    assert samples(expired, "tcpaccept_accepts_total", lport=lport) == []
    assert [v for _, v in samples(again, "tcpaccept_accepts_total", lport=lport)] == [2]
    assert len(left) == 1


@pytest.mark.method_agnostic  # a map's bound
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


@pytest.fixture
def two_namespaces() -> Iterator[tuple[NetNamespace, NetNamespace]]:
    first = netns.create("tcpa-agg")
    second = netns.create("tcpa-agg")
    try:
        yield next(first), next(second)
    finally:
        for created in (first, second):
            created.close()  # runs the generator's cleanup: ip netns delete


def test_same_address_and_port_in_two_namespaces_are_two_series(
        two_namespaces: tuple[NetNamespace, NetNamespace]) -> None:
    a, b = two_namespaces
    port = free_port()
    metrics_port = free_port()
    with start_server(port=port, backlog=16, netns=a.name) as in_a, \
            start_server(port=port, backlog=32, netns=b.name) as in_b:
        run = start_tracer("--metrics", f"127.0.0.1:{metrics_port}", "--quiet",
                           "-P", str(port))
        try:
            clients = [connect("127.0.0.1", port, netns=a.name) for _ in range(3)]
            clients += [connect("127.0.0.1", port, netns=b.name) for _ in range(5)]
            in_a.accept(3)
            in_b.accept(5)
            body = scrape_when(metrics_port, lambda b: sum(
                v for _, v in samples(b, "tcpaccept_accepts_total", lport=str(port))) >= 8)
        finally:
            run.stop()
            for c in clients:
                c.close()
    by_netns = {labels["netns"]: (labels["laddr"], value)
                for labels, value in samples(body, "tcpaccept_accepts_total", lport=str(port))}
    assert by_netns == {str(a.inode): ("127.0.0.1", 3), str(b.inode): ("127.0.0.1", 5)}
    limits = {labels["netns"]: value for labels, value in
              samples(body, "tcpaccept_listen_backlog_max", lport=str(port))}
    assert limits == {str(a.inode): 16, str(b.inode): 32}


def test_dual_stack_wildcard_listener_is_keyed_by_its_bound_address() -> None:
    metrics_port = free_port()
    with start_server(host="::", family=socket.AF_INET6, v6only=False) as server:
        run = start_tracer("--metrics", f"127.0.0.1:{metrics_port}", "--quiet",
                           "-P", str(server.port))
        try:
            clients = [connect("127.0.0.1", server.port) for _ in range(2)]
            clients.append(connect("::1", server.port, family=socket.AF_INET6))
            server.accept(3)
            body = scrape(metrics_port)
        finally:
            run.stop()
            for c in clients:
                c.close()
    series = samples(body, "tcpaccept_accepts_total", lport=str(server.port))
    assert [(labels["laddr"], value) for labels, value in series] == [("::", 3)]


@pytest.mark.method_agnostic  # a map's bound
def test_a_full_listener_map_counts_what_it_could_not_aggregate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aggregate, "listener_entries", lambda *_: 4)
    servers = [start_server() for _ in range(6)]
    try:
        ports = frozenset(s.port for s in servers)
        with Tracer(Config(probe=PROBE, lports=ports), aggregate=True,
                    emit_records=False) as tracer:
            reader = AggregateReader(tracer)
            for server in servers:
                client = connect("127.0.0.1", server.port)
                server.accept(1)
                client.close()
            sink = MetricsSink(reader, labels=("lport",))
            body = scrape_state(sink)
            counted = sum(v for _, v in samples(body, "tcpaccept_accepts_total"))
    finally:
        for server in servers:
            server.close()
    assert reader.listeners.max_entries == 4
    assert counted == 4
    assert samples(body, "tcpaccept_aggregation_overflow_total", map="listener_stats") == [
        ({"map": "listener_stats"}, 2)]
