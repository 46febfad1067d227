"""Accept workloads for the aggregation tests: a server child that accepts N connections as
fast as it can (optionally renaming itself before each accept), and a client loop that
spreads connections over many loopback addresses, plus scrape and memory helpers."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional

from prometheus_client.parser import text_string_to_metric_families

ACCEPT_SERVER = textwrap.dedent(
    """
    import ctypes, json, os, socket, sys
    host, count, rename = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "rename"
    prctl = ctypes.CDLL(None).prctl
    prctl(15, b"loadsrv", 0, 0, 0)  # PR_SET_NAME
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(4096)
    print(json.dumps({"port": s.getsockname()[1], "pid": os.getpid()}), flush=True)
    sys.stdin.readline()  # "go": the tracer is attached
    for i in range(count):
        if rename:  # a process that renames itself between accepts
            prctl(15, f"rn{i}".encode(), 0, 0, 0)
        c, _ = s.accept()
        c.close()
    print("done", flush=True)
    sys.stdin.readline()
    """
)


class AcceptServer:
    """A child that listens on host (0.0.0.0: a wildcard listener) and accepts `count`."""

    def __init__(self, count: int, host: str = "0.0.0.0", rename: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ACCEPT_SERVER, host, str(count),
             "rename" if rename else "keep"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        hello = json.loads(self.proc.stdout.readline())
        self.port: int = hello["port"]
        self.pid: int = hello["pid"]

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_done(self, timeout: float = 60) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "done", f"accept server ended early: {line!r}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait(10)


@contextlib.contextmanager
def accept_server(count: int, host: str = "0.0.0.0",
                  rename: bool = False) -> Iterator[AcceptServer]:
    server = AcceptServer(count, host, rename)
    try:
        yield server
    finally:
        server.close()


def loopback(i: int, base: int = 1) -> str:
    """The i-th address of 127.<base>.0.0/16 (skipping .0 and .255 host bytes)."""
    return f"127.{base}.{i // 250}.{i % 250 + 1}"


def connect_many(port: int, count: int, destinations: int = 1, sources: int = 0,
                 host: Optional[str] = None) -> None:
    """count connections to port, over `destinations` local addresses (127.1.x.y; or to
    host) and, if sources, from that many client addresses (127.2.x.y); each closed once
    connected."""
    for i in range(count):
        c = socket.socket()
        try:
            if sources:
                c.bind((loopback(i % sources, 2), 0))
            c.connect((host or loopback(i % destinations, 1), port))
        finally:
            c.close()


def scrape(port: int) -> bytes:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()


def scrape_when(port: int, ready: Callable[[bytes], bool], timeout: float = 30) -> bytes:
    """A scrape whose body satisfies `ready`, or the last one after `timeout`. A scrape waits
    at most metrics_server.FRESH_WAIT_S for the main loop's next read, else it is served the
    state before (the endpoint never stalls): in a slow guest that may predate the last
    accepts, which the kernel has counted all the same."""
    deadline = time.monotonic() + timeout
    while True:
        body = scrape(port)
        if ready(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def samples(body: bytes, name: str, **match: str) -> list[tuple[dict, float]]:
    """(labels, value) of every sample called name whose labels include `match`."""
    return [(s.labels, s.value) for family in text_string_to_metric_families(body.decode())
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items())]


def rss_kb(pid: int, field: str = "VmRSS") -> Optional[int]:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return None
