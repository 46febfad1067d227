"""What the BPF programs cost per accept, from the kernel's own per-program counters.

The counters (run_time_ns, run_cnt in /proc/PID/fdinfo of each program fd) only move while
run-time stats are enabled. The bench enables them with BPF_ENABLE_STATS, whose effect lasts
as long as the returned fd is open and is counted apart from `sysctl
kernel.bpf_stats_enabled`: another user of the sysctl on this machine is not disturbed, and
nothing stays enabled if the bench dies. Stats cost two clock reads per program run
(~50 ns, ~0.2% of a request here), for untraced runs nothing."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
from dataclasses import dataclass
from typing import Optional

from bench.common import log, which

BPF_STATS_RUN_TIME = 0


class RunTimeStats:
    """Context manager: run-time stats on while it is open; `error` says why not."""

    def __init__(self) -> None:
        self.fd: Optional[int] = None
        self.error: Optional[str] = None

    def __enter__(self) -> RunTimeStats:
        try:
            libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
            fd = libbpf.bpf_enable_stats(BPF_STATS_RUN_TIME)
        except (OSError, AttributeError) as exc:
            self.error = str(exc)
            return self
        if fd < 0:
            self.error = f"BPF_ENABLE_STATS: {os.strerror(-fd)}"
            log(f"no BPF run-time stats: {self.error}")
        else:
            self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class ProgCounters:
    run_cnt: int
    run_time_ns: int


def prog_counters(pid: int) -> dict[int, ProgCounters]:
    """prog id -> counters, for every BPF program process `pid` holds an fd of."""
    found: dict[int, ProgCounters] = {}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    info = dict(line.split(":", 1) for line in f if ":" in line)
                found[int(info["prog_id"])] = ProgCounters(int(info["run_cnt"]),
                                                           int(info["run_time_ns"]))
    return found


def prog_names(ids: set[int]) -> dict[int, str]:
    """prog id -> name (bpftool; names are for the table only)."""
    if not ids:
        return {}
    try:
        out = subprocess.run([which("bpftool"), "prog", "show", "-j"], capture_output=True,
                             text=True, timeout=10).stdout
        return {p["id"]: p.get("name", "?") for p in json.loads(out) if p.get("id") in ids}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def delta(before: dict[int, ProgCounters], after: dict[int, ProgCounters]) -> dict:
    """Runs, run time and ns per run of each program over a window, and the total run
    time. Programs of one name are added up: bpftrace names both of its accept probes
    `sys_exit_accept` (names are cut to 15 characters)."""
    names = prog_names(set(after))
    by_name: dict[str, list[int]] = {}
    total_ns = 0
    for prog_id, now in after.items():
        then = before.get(prog_id, ProgCounters(0, 0))
        runs, ns = now.run_cnt - then.run_cnt, now.run_time_ns - then.run_time_ns
        total_ns += ns
        sums = by_name.setdefault(names.get(prog_id, str(prog_id)), [0, 0])
        sums[0] += runs
        sums[1] += ns
    programs = {name: {"runs": runs, "ns": ns, "ns_per_run": round(ns / runs, 1)}
                for name, (runs, ns) in by_name.items() if runs}
    return {"total_ns": total_ns, "programs": programs}
