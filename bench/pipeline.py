"""The user-space pipeline without a kernel: synthetic raw records through the decoder
(once per record, as the run loop does) and a line sink writing to /dev/null."""

from __future__ import annotations

import os
import random
import socket
import statistics
import time
from typing import Callable

from bench.common import log
from tcpaccept.event import Decoder, RecordLayout
from tcpaccept.output.json_lines import JsonFormatter
from tcpaccept.output.lines import LineSink, TextOutput
from tcpaccept.output.text import TextFormatter
from tcpaccept.sink import LostNotices
from tests.support.records import encode_record

WALL_OFFSET_NS = 1_700_000_000_000_000_000  # fixed: the same lines on every run


def synthetic_records(n: int, seed: int = 5) -> list[bytes]:
    """Raw records as the kernel writes them, with a busy server's variety: mostly IPv4,
    some IPv6 and IPv4-mapped clients from a pool of a few thousand, a handful of
    processes and ports, ~21k accepts/s of timestamps, queue latency on most."""
    rng = random.Random(seed)
    af4, af6 = socket.AF_INET, socket.AF_INET6
    mapped = b"\0" * 10 + b"\xff\xff"
    v4 = [bytes([10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])
          for _ in range(2500)] + [bytes([127, 0, 0, 1])]
    v6 = [bytes([0xfd]) + rng.randbytes(15) for _ in range(400)]
    procs = [(rng.randrange(300, 400000), comm) for comm in
             ("nginx", "nginx", "nginx", "sshd", "python3", "postgres", "node", "java",
              "haproxy", "my \"odd\" name")]
    lports = [80, 443, 8080, 5432, 22]
    start_ns = 4_000_000_000_000
    layout = RecordLayout.from_object()
    records = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.7:
            family, raddr, laddr = af4, rng.choice(v4) + bytes(12), bytes([10, 0, 0, 1]) + bytes(12)
        elif kind < 0.85:
            family, raddr, laddr = af6, rng.choice(v6), bytes([0xfd]) + bytes(14) + b"\x01"
        else:
            family, raddr, laddr = af6, mapped + rng.choice(v4), mapped + bytes([10, 0, 0, 1])
        pid, comm = rng.choice(procs)
        records.append(encode_record(layout, **{
            "ts_ns": start_ns + i * 47_000 + rng.randrange(1000),
            "cgroup_id": 4242 + pid % 7,
            "queue_latency_ns": 0 if rng.random() < 0.3 else rng.randrange(1000, 5_000_000),
            "pid": pid, "tid": pid + rng.randrange(4), "uid": 33 if comm == "nginx" else 0,
            "netns": 4026531840, "fd": rng.randrange(3, 4000), "listen_fd": 6,
            "backlog": rng.randrange(0, 16), "backlog_max": 4096, "family": family,
            "lport": rng.choice(lports), "rport": rng.randrange(32768, 61000), "probe": 1,
            "laddr": laddr, "raddr": raddr, "comm": comm,
        }))
    return records


def pipeline_rate(records: list[bytes], make_line: Callable[[], Callable], batch: int,
                  repeats: int) -> float:
    """Events/s through decode -> LineSink(formatter) -> /dev/null, as the run loop does."""
    batches = [records[i:i + batch] for i in range(0, len(records), batch)]
    rates = []
    with open(os.devnull, "w") as devnull:
        for _ in range(repeats):
            decode = Decoder(boot_to_wall_ns=WALL_OFFSET_NS).decode
            handle = LineSink(TextOutput(devnull), LostNotices(devnull), make_line()).handle
            t0 = time.perf_counter()
            for chunk in batches:
                handle([decode(record) for record in chunk])
            rates.append(len(records) / (time.perf_counter() - t0))
    return statistics.median(rates)


def decode_rate(records: list[bytes], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        decode = Decoder(boot_to_wall_ns=WALL_OFFSET_NS).decode
        t0 = time.perf_counter()
        for r in records:
            decode(r)
        rates.append(len(records) / (time.perf_counter() - t0))
    return statistics.median(rates)


def pipeline(n: int, repeats: int) -> dict:
    log(f"pipeline: {n} synthetic records")
    records = synthetic_records(n)
    small = records[: max(1, n // 5)]
    return {
        "records": n,
        "text_eps": pipeline_rate(records, lambda: TextFormatter().line, 100, repeats),
        "json_eps": pipeline_rate(records, lambda: JsonFormatter().line, 100, repeats),
        "text_eps_batch1": pipeline_rate(small, lambda: TextFormatter().line, 1, repeats),
        "decode_eps": decode_rate(records, repeats),
    }
