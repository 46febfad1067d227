"""Issue 17: the metrics endpoint under a storm, on 4,096 real listeners (one accept each,
in a network namespace of the test's own, traced with --netns).

Before (issue 17, this machine): 16 clients that send GET /metrics and never read delayed
the next scrape to 11.5 s (RSS 38 -> 240 MB); 64 such clients made a scrape time out at
120 s and SIGTERM take 6.4 s. Targets: one scrape <= 1 s; with 16 unread scrapes and 64
idle connections a fresh scrape <= 1 s (failed past 3 s: a busy shared machine), the
agent's RSS <= 80 MB, SIGTERM <= 1 s (failed past 3 s, as the scrape: the 2 cores are
shared, load averages of 15 were seen). `pytest -s` prints the figures; bench/metrics_storm.py
measures the goals over several rounds.

What this test asserts is the property, measured against itself: a scrape during the storm
takes at most STORM_SLOWDOWN times the scrape it made just before without one (or 3 s,
whichever is more). A fixed bound on a lone scrape failed beside two test runs on 2 cores
(3.5 s); how fast one scrape is, is the benchmark's to say."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from typing import Iterator

import pytest

from tests.support import netns
from tests.support.accept_load import rss_kb, samples
from tests.support.child import free_port
from tests.support.many_listeners import ManyListeners
from tests.support.netns import NetNamespace
from tests.support.tracer import start_tracer

pytestmark = [pytest.mark.host_only]  # 4,096 listeners, a scrape storm, time and RSS bounds

LISTENERS = 4096
UNREAD_SCRAPES = 16
IDLE_CONNECTIONS = 64
SCRAPE_LIMIT_S = 3.0  # the goal is 1 s; past 3 s the endpoint has stalled
STORM_SLOWDOWN = 3  # the storm's scrape vs the lone one (before issue 17's fix: x20, timeouts)
RSS_LIMIT_KB = 80 * 1024
SIGTERM_LIMIT_S = 3.0  # the goal is 1 s (0.2-0.6 s here); the same margin as the scrape


@pytest.fixture
def namespace() -> Iterator[NetNamespace]:
    created = netns.create("tcpa-storm")
    try:
        yield next(created)
    finally:
        created.close()


def timed_scrape(port: int, gzip: bool = False) -> tuple[float, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Accept-Encoding": "gzip"} if gzip else {})
    start = time.monotonic()
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return time.monotonic() - start, body


def counted_listeners(body: bytes, inode: int) -> tuple[int, float]:
    """(series of our namespace, accepts the kernel could not aggregate: map full)."""
    ours = samples(body, "tcpaccept_accepts_total", netns=str(inode))
    assert all(value == 1 for _, value in ours)
    ((_, overflow),) = samples(body, "tcpaccept_aggregation_overflow_total",
                               map="listener_stats")
    return len(ours), overflow


def unread_scrape(port: int) -> socket.socket:
    """A client that asks for the whole body and never reads a byte of it."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(b"GET /metrics HTTP/1.1\r\nHost: storm\r\n\r\n")
    return client


def test_a_storm_of_unread_scrapes_and_idle_connections_cannot_stall_the_endpoint(
        namespace: NetNamespace) -> None:
    metrics_port = free_port()
    listeners = ManyListeners(namespace, LISTENERS)
    run = None
    clients: list[socket.socket] = []
    try:
        run = start_tracer("--metrics", f"127.0.0.1:{metrics_port}", "--quiet",
                           "--netns", str(namespace.inode))
        listeners.accept_once_each()
        rss_before = rss_kb(run.proc.pid) or 0
        # Each scrape asks the main loop for a fresh table; every accept has been counted
        # once the kernel's table holds them all (an accept that found the map full is
        # counted as overflow, never lost).
        deadline = time.monotonic() + 30
        while True:
            one_scrape_s, body = timed_scrape(metrics_port)
            series, overflow = counted_listeners(body, namespace.inode)
            if series + overflow >= LISTENERS or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert series + overflow == LISTENERS, (series, overflow)
        gzip_s, _ = timed_scrape(metrics_port, gzip=True)

        clients = [socket.create_connection(("127.0.0.1", metrics_port))
                   for _ in range(IDLE_CONNECTIONS)]
        clients += [unread_scrape(metrics_port) for _ in range(UNREAD_SCRAPES)]
        time.sleep(0.5)  # the server answers them: each send stops at a full socket
        storm_scrape_s, storm_body = timed_scrape(metrics_port)
        assert counted_listeners(storm_body, namespace.inode)[0] == series
        rss_storm = rss_kb(run.proc.pid) or 0
        peak = rss_kb(run.proc.pid, "VmHWM") or 0

        start = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        run.proc.wait(30)
        sigterm_s = time.monotonic() - start
    finally:
        for client in clients:
            client.close()
        if run is not None:
            run.stop()
        listeners.close()
    print(f"\nstorm: {LISTENERS} listeners ({series} series, {overflow:g} overflow), body "
          f"{len(body)} B; one scrape {one_scrape_s:.3f} s, gzip {gzip_s:.3f} s; with "
          f"{UNREAD_SCRAPES} unread scrapes and {IDLE_CONNECTIONS} idle connections a fresh "
          f"scrape {storm_scrape_s:.3f} s; RSS {rss_before} -> {rss_storm} kB (peak {peak} "
          f"kB); SIGTERM {sigterm_s:.3f} s")
    assert run.returncode == 0, run.stderr
    assert storm_scrape_s <= max(SCRAPE_LIMIT_S, STORM_SLOWDOWN * one_scrape_s)
    assert rss_storm <= RSS_LIMIT_KB and peak <= RSS_LIMIT_KB
    assert sigterm_s <= SIGTERM_LIMIT_S
