#!/usr/bin/env python3
"""Benchmark (issue 17): the metrics endpoint under a storm, on N real listeners.

    python bench/metrics_storm.py [--listeners 4096] [--unread 16] [--idle 64] [--rounds 3]

A child in a network namespace of its own opens N listeners on 127.0.0.1 and accepts one
connection on each; `tcpaccept --metrics --quiet --netns` traces it. Each round times one
scrape (plain and gzip), then opens `--idle` connections that send nothing and `--unread`
that send GET /metrics and never read, and times a fresh scrape among them; the agent's
RSS (now and peak) and the time SIGTERM takes to end it are read at the end. Targets:
scrape <= 1 s, storm scrape <= 1 s, RSS <= 80 MB, SIGTERM <= 1 s. Needs root.
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
try:
    import tcpaccept  # noqa: F401
except ImportError:
    sys.path.insert(1, str(REPO / "src"))

from tests.kernel.test_metrics_storm import (  # noqa: E402
    counted_listeners,
    timed_scrape,
    unread_scrape,
)
from tests.support import netns  # noqa: E402
from tests.support.accept_load import rss_kb  # noqa: E402
from tests.support.child import free_port  # noqa: E402
from tests.support.many_listeners import ManyListeners  # noqa: E402
from tests.support.tracer import start_tracer  # noqa: E402


def storm_round(port: int, unread: int, idle: int) -> tuple[float, float, float]:
    """(one scrape s, gzip scrape s, fresh scrape among the storm s)."""
    one, _ = timed_scrape(port)
    gz, _ = timed_scrape(port, gzip=True)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle)]
    try:
        clients += [unread_scrape(port) for _ in range(unread)]
        time.sleep(0.5)
        storm, _ = timed_scrape(port)
    finally:
        for client in clients:
            client.close()
    return one, gz, storm


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listeners", type=int, default=4096)
    p.add_argument("--unread", type=int, default=16)
    p.add_argument("--idle", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    created = netns.create("tcpa-bench")
    ns = next(created)
    listeners = ManyListeners(ns, args.listeners)
    port = free_port()
    run = start_tracer("--metrics", f"127.0.0.1:{port}", "--quiet", "--netns", str(ns.inode))
    try:
        listeners.accept_once_each()
        deadline = time.monotonic() + 30
        while True:
            _, body = timed_scrape(port)
            series, overflow = counted_listeners(body, ns.inode)
            if series + overflow >= args.listeners or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        rss_start = rss_kb(run.proc.pid) or 0
        rounds = [storm_round(port, args.unread, args.idle) for _ in range(args.rounds)]
        rss_end, peak = rss_kb(run.proc.pid) or 0, rss_kb(run.proc.pid, "VmHWM") or 0
        start = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        run.proc.wait(30)
        sigterm = time.monotonic() - start
    finally:
        run.stop()
        listeners.close()
        created.close()
    one, gz, storm = (statistics.median(r[i] for r in rounds) for i in range(3))
    print(f"listeners {args.listeners}: {series} series, {overflow:g} overflow, body "
          f"{len(body)} B")
    print(f"scrape (median of {args.rounds}): {one:.3f} s; gzip {gz:.3f} s; with "
          f"{args.unread} unread + {args.idle} idle: {storm:.3f} s "
          f"(max {max(r[2] for r in rounds):.3f} s)")
    print(f"RSS: {rss_start} -> {rss_end} kB, peak {peak} kB; SIGTERM {sigterm:.3f} s")
    ok = storm <= 1.0 and one <= 1.0 and peak <= 80 * 1024 and sigterm <= 1.0
    print("targets: " + ("met" if ok else "MISSED"))
    return 0 if run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
