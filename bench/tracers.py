"""One tracer next to nginx (tcpaccept in some mode, or the bpftrace peer): start it, know
when it really traces, stop it, and read what it printed, lost or counted."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

from bench.common import TracerFailed, log, which
from bench.variants import Variant
from tcpaccept.run import BANNER
from tests.support.child import Child, ChildError, free_port

# The syscall-exit tracepoints both tools attach to on this kind of kernel.
ACCEPT_TRACEPOINTS = {"sys_exit_accept4", "sys_exit_accept"}
LOST_RE = re.compile(r"Lost (\d+) events( in total)?")
SAMPLE_RE = re.compile(r'^tcpaccept_accepts_total\{(?P<labels>.*)\} (?P<value>\S+)$')
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def perf_attachments() -> list[tuple[int, str]]:
    """(pid, tracepoint) of every tracepoint with a BPF program on it (bpftool perf)."""
    try:
        out = subprocess.run([which("bpftool"), "perf", "show"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "pid" and fields[1].isdigit():
            tracepoint = next((f for f in fields if f.startswith("sys_")), "")
            found.append((int(fields[1]), tracepoint))
    return found


def attached_tracepoints(pid: int) -> set[str]:
    return {tp for p, tp in perf_attachments() if p == pid and tp in ACCEPT_TRACEPOINTS}


def _has_ring_and_links(pid: int) -> bool:
    """Fallback readiness for attach methods bpftool perf cannot see (fexit): the libbpf
    ring buffer's epoll exists, and is made after every program is attached."""
    kinds = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                kinds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return "anon_inode:[eventpoll]" in kinds and kinds.count("anon_inode:bpf_link") >= 2


def scrape_accepts(metrics_port: int, lport: int) -> int:
    """tcpaccept_accepts_total summed over every series of local port `lport`."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        match = SAMPLE_RE.match(line)
        if match and ("lport", str(lport)) in LABEL_RE.findall(match.group("labels")):
            total += float(match.group("value"))
    return int(total)


class TracerProcess:
    """stdout goes to /dev/null or a file, stderr to a file; SIGINT stops it (the peer:
    again every 0.5 s, as bpftrace can miss one while it attaches)."""

    def __init__(self, variant: Variant, tool: Path, workdir: Path, tag: str) -> None:
        self.variant = variant
        self.tool = tool
        self.metrics_port = free_port() if variant.kind == "metrics" else None
        self.out_path = workdir / f"{tag}.out" if variant.counted else None
        self.err_path = workdir / f"{tag}.err"
        self.child: Optional[Child] = None
        self.ready_s: Optional[float] = None

    @property
    def name(self) -> str:
        return self.variant.label

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def start(self, timeout: float = 20.0) -> None:
        self.child = Child(self.variant.command(self.tool, self.metrics_port or 0),
                           stdout=self.out_path or subprocess.DEVNULL, stderr=self.err_path,
                           new_session=True)
        try:
            self.ready_s = self.child.wait_until(self._ready, "tracing", timeout)
        except ChildError as exc:
            self.stop()
            raise TracerFailed(f"{self.name}: {exc}") from None

    def _ready(self) -> bool:
        assert self.child is not None
        stream = self.variant.banner_stream
        # The banner, when it can be seen (not on /dev/null), must be out ...
        if self.child.paths[stream] is not None and BANNER not in self.child.head(stream):
            return False
        # ... and, as bpftrace runs BEGIN before it attaches the other probes, the kernel
        # must list both tracepoints as attached (bpftool perf show).
        pid = self.child.pid
        return (attached_tracepoints(pid) >= ACCEPT_TRACEPOINTS
                or (self.variant.is_tool and _has_ring_and_links(pid)))

    def stop(self) -> None:
        if self.child is None:
            return
        peer = self.variant.kind == "peer"
        self.child.stop(signal.SIGINT, resend_every=0.5 if peer else None, timeout=15)
        if self.child.killed:
            log(f"{self.name} ignored SIGINT for 15 s: killed it")

    @property
    def returncode(self) -> Optional[int]:
        return self.child.returncode if self.child else None

    @property
    def hwm_kb(self) -> Optional[int]:
        return self.child.hwm_kb if self.child else None

    def stderr_text(self) -> str:
        return self.child.text("stderr") if self.child else ""

    def lost(self) -> int:
        increments, total = 0, None
        for match in LOST_RE.finditer(self.stderr_text()):
            if match.group(2):
                total = int(match.group(1))
            else:
                increments += int(match.group(1))
        return max(increments, total or 0)

    def stderr_lines(self) -> list[str]:
        """stderr, less what is expected (lost-event lines; bpftrace's memlock warning)."""
        return [line for line in self.stderr_text().splitlines()
                if line.strip() and line != BANNER and not LOST_RE.search(line)
                and "RLIMIT_MEMLOCK" not in line]


def count_events(variant: Variant, path: Path, pids: set[int],
                 port: int) -> tuple[int, int, int]:
    """(events from our nginx on our port, all event lines, lost events) in a counted
    tracer's output: bpftrace reports its lost events on stdout."""
    if variant.kind == "summary":
        return summary_accepts(path, port)
    ours = total = lost = 0
    pid_texts = {str(p) for p in pids}
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("Lost "):
                match = LOST_RE.search(line)
                lost += int(match.group(1)) if match else 0
            if variant.kind == "json":
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") != "accept":
                    continue
                total += 1
                ours += event.get("pid") in pids and event.get("lport") == port
                continue
            fields = line.split()
            # text: TIME PID COMM RADDR RPORT LADDR LPORT BL; peer: TIME PID COMM FD
            if len(fields) < 4 or not fields[1].isdigit() or line == BANNER:
                continue
            total += 1
            if variant.kind == "text":
                ours += fields[1] in pid_texts and fields[-2] == str(port)
            else:  # the peer cannot see ports; nginx only listens on ours
                ours += fields[1] in pid_texts
    return ours, total, lost


@contextlib.contextmanager
def attached(variant: Variant, tool: Path, workdir: Path, tag: str) -> Iterator[TracerProcess]:
    """A tracer that traces for the duration of the `with` block."""
    tracer = TracerProcess(variant, tool, workdir, tag)
    try:
        tracer.start()
        yield tracer
    finally:
        tracer.stop()


def summary_accepts(path: Path, port: int) -> tuple[int, int, int]:
    """(accepts on listeners of `port`, all accepts, 0) summed over every interval's
    table of `tcpaccept -s`. The ACCEPTS column is found by its header (right-aligned),
    so added columns do not move it; a line `Lost N events` on stdout counts as lost."""
    ours = total = lost = 0
    end = None  # where the ACCEPTS column ends, inside a LISTENER table
    suffix = f":{port}"
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("LISTENER") and "ACCEPTS" in line:
            end = line.index("ACCEPTS") + len("ACCEPTS")
            continue
        if not line.strip() or line.startswith("TOP REMOTES"):
            end = None
            continue
        match = LOST_RE.search(line)
        if match and not match.group(2):
            lost += int(match.group(1))
        if end is None:
            continue
        fields = line[:end].split()
        if not fields or not fields[-1].isdigit():
            continue
        total += int(fields[-1])
        ours += int(fields[-1]) if fields[0].endswith(suffix) else 0
    return ours, total, lost
