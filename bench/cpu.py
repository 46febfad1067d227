"""Who used the CPUs during a load: nginx, the tracer, and everybody else (a shared 2-CPU
machine: someone's qemu halves nginx, so the bench measures it and can wait it out)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Optional

from bench.common import log

PF_KTHREAD = 0x00200000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_ticks() -> dict[int, int]:
    """utime+stime of every user-space process now (kernel threads left out: ksoftirqd
    mostly does our own loopback traffic)."""
    ticks = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if int(fields[6]) & PF_KTHREAD:  # field 9, flags
            continue
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])  # fields 14, 15
    return ticks


def voluntary_switches(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


class CpuMeter:
    """CPU over the load, in cores: unrelated processes (the figures are noisy when it is
    high), the tracer, nginx; and the tracer's wakeups."""

    def __init__(self, nginx_pids: set[int], tracer_pid: Optional[int]) -> None:
        self.nginx_pids = nginx_pids
        self.tracer_pid = tracer_pid
        self.t0 = time.monotonic()
        self.before = process_cpu_ticks()
        self.switches = voluntary_switches(tracer_pid) if tracer_pid else 0

    def stop(self) -> dict:
        after = process_cpu_ticks()
        seconds = max(time.monotonic() - self.t0, 1e-3)

        def cores(pids) -> float:
            ticks = sum(after[p] - self.before[p] for p in pids
                        if p in after and p in self.before)
            return round(ticks / CLK_TCK / seconds, 3)

        ours = {os.getpid(), *self.nginx_pids, self.tracer_pid}
        return {
            "other_cpu": cores(set(self.before) - ours),
            "nginx_cpu": cores(self.nginx_pids),
            "tracer_cpu": cores({self.tracer_pid}) if self.tracer_pid else None,
            "tracer_wakeups": (voluntary_switches(self.tracer_pid) - self.switches
                               if self.tracer_pid else None),
        }


class QuietWait:
    """Before each run, wait (within a total budget) until unrelated processes use less
    than `threshold` cores."""

    def __init__(self, budget_s: float, threshold: float = 0.1) -> None:
        self.budget_s = budget_s
        self.threshold = threshold
        self.waited_s = 0.0
        self._logged_at = -1e9

    def __call__(self, ours: set[int]) -> float:
        """Waits as needed; returns the last measured background load in cores."""
        if self.budget_s <= 0:
            return 0.0
        while True:
            t0 = time.monotonic()
            before = process_cpu_ticks()
            time.sleep(0.5)
            after = process_cpu_ticks()
            ticks = sum(after[p] - before[p] for p in before
                        if p in after and p not in ours)
            load = ticks / CLK_TCK / (time.monotonic() - t0)
            if load <= self.threshold or self.waited_s >= self.budget_s:
                return load
            if time.monotonic() - self._logged_at >= 30:
                self._logged_at = time.monotonic()
                log(f"  machine busy ({load:.2f} cores used by other processes): waiting "
                    f"({self.waited_s:.0f}/{self.budget_s:.0f} s of --quiet-wait used)")
            time.sleep(2.5)
            self.waited_s += time.monotonic() - t0
