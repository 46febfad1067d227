"""Issue 6: how long connections wait in the accept queue, and summary mode."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from tests.support.servers import connect, start_server
from tests.support.tracer import TracerRun, start_tracer


def test_queue_latency_grows_by_the_servers_sleep() -> None:
    with start_server(backlog=16) as server, \
            start_tracer("-p", str(server.pid)) as run:  # JSON always has queue_latency_us
        clients = [connect("127.0.0.1", server.port) for _ in range(5)]
        server.accept_async(5, sleep=0.2)  # sleep 200 ms before each accept
        server.collect()
    latencies_ms = [e["queue_latency_us"] / 1000 for e in sorted(run.events([server.pid]),
                                                                  key=lambda e: e["time"])]
    assert len(latencies_ms) == 5
    assert 180 <= latencies_ms[0] <= 400, latencies_ms
    for earlier, later in zip(latencies_ms, latencies_ms[1:]):
        assert 150 <= later - earlier <= 300, latencies_ms
    for c in clients:
        c.close()


def test_latency_column_in_text_mode() -> None:
    with start_server() as server, \
            start_tracer("-l", "-P", str(server.port), json_mode=False) as run:
        client = connect("127.0.0.1", server.port)
        time.sleep(0.1)
        server.accept(1)
    header, row = run.lines[1], run.lines[2]
    assert header.endswith("QLAT(ms)")
    assert 90 <= float(row.split()[-1]) <= 1000
    client.close()


def test_connection_established_before_tracing_has_null_latency() -> None:
    with start_server() as server:
        client = connect("127.0.0.1", server.port)
        time.sleep(0.1)
        with start_tracer("-p", str(server.pid)) as run:
            server.accept(1)
    (event,) = run.events([server.pid])
    assert event["queue_latency_us"] is None
    client.close()


def _bind_connect(source: str, port: int) -> socket.socket:
    c = socket.socket()
    c.bind((source, 0))
    c.connect(("127.0.0.1", port))
    return c


def test_summary_counts_per_listener_and_top_remotes_exactly() -> None:
    with start_server(comm="srv-a") as a, start_server(comm="srv-b") as b, \
            start_tracer("--summary", "60", "-p", f"{a.pid},{b.pid}") as run:
        clients = [_bind_connect("127.0.0.1", a.port) for _ in range(4)]
        clients += [_bind_connect("127.0.0.2", a.port) for _ in range(2)]
        clients += [_bind_connect("127.0.0.3", b.port) for _ in range(3)]
        a.accept(6)
        b.accept(3)
    objects = [json.loads(line) for line in run.lines]
    (summary,) = [o for o in objects if o["event"] == "summary"]
    rows = {(r["comm"], r["lport"]): r for r in summary["listeners"]}
    assert set(rows) == {("srv-a", a.port), ("srv-b", b.port)}
    assert rows[("srv-a", a.port)]["accepts"] == 6
    assert rows[("srv-a", a.port)]["pid"] == a.pid
    assert rows[("srv-b", b.port)]["accepts"] == 3
    assert summary["top_remotes"] == [
        {"raddr": "127.0.0.1", "accepts": 4},
        {"raddr": "127.0.0.3", "accepts": 3},
        {"raddr": "127.0.0.2", "accepts": 2},
    ]
    histograms = {o["lport"]: o for o in objects if o["event"] == "histogram"}
    assert sum(bucket["count"] for bucket in histograms[a.port]["buckets"]) == 6
    assert sum(bucket["count"] for bucket in histograms[b.port]["buckets"]) == 3
    for c in clients:
        c.close()


def _latency_map_of(run: TracerRun) -> int:
    """The established_at map of this test's own tracer: among the maps its process holds
    (other tracers on this machine have one each)."""
    ids = []
    for map_id in run.bpf_ids("map"):
        info = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "id", str(map_id)],
                                         capture_output=True, text=True, check=True).stdout)
        if info.get("name") == "established_at":
            ids.append(map_id)
    (ours,) = ids
    return ours


def _map_entries(map_id: int) -> tuple[int, int]:
    info = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "id", str(map_id)],
                                     capture_output=True, text=True, check=True).stdout)
    dump = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)],
                                     capture_output=True, text=True, check=True).stdout)
    return len(dump), info["max_entries"]


@pytest.mark.method_agnostic  # the maps' bounds: the same whatever delivers the accepts
def test_never_accepted_connections_leave_the_latency_map_bounded() -> None:
    total = 0
    with start_tracer() as run:
        ours = _latency_map_of(run)
        while total < 100_000:
            # A listener that never accepts: 4000 children queue up, then it closes.
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(4096)
            port = listener.getsockname()[1]
            for _ in range(4000):
                c = socket.socket()
                c.connect(("127.0.0.1", port))
                c.close()
            total += 4000
            listener.close()
        entries, max_entries = _map_entries(ours)
    assert max_entries == 16384
    # Stamps really were taken, yet the map stays bounded: the LRU evicted the rest.
    # (The kernel's LRU evicts from per-CPU lists well before it is full.)
    assert 1000 <= entries <= max_entries, entries
    assert run.events([os.getpid()]) == []
