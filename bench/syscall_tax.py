"""The machine-wide tax of a syscall tracepoint: while any sys_enter/sys_exit tracepoint
has a program attached, every syscall of every process takes the slow path. Measured as
ns per getppid() (not cached by glibc: a real syscall each time) in a tight C loop,
compiled here at run time, alternately without and with a tracer attached."""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path
from typing import Callable, ContextManager

from bench.common import BenchError, log, which
from bench.tracers import perf_attachments

LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.2f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""


def build_loop(workdir: Path) -> Path:
    source, binary = workdir / "getppid_loop.c", workdir / "getppid_loop"
    source.write_text(LOOP_C)
    result = subprocess.run([which("cc"), "-O2", "-o", str(binary), str(source)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"cannot build the getppid loop: {result.stderr.strip()[-300:]}")
    return binary


def ns_per_call(binary: Path, calls: int) -> float:
    try:
        out = subprocess.run([str(binary), str(calls)], capture_output=True, text=True,
                             check=True, timeout=120).stdout
        return float(out)
    except (subprocess.SubprocessError, ValueError) as exc:
        raise BenchError(f"the getppid loop failed: {exc}") from None


def syscall_tax(workdir: Path, tracers: dict[str, Callable[[], ContextManager]],
                rounds: int, calls: int) -> dict:
    """ns/call untraced and with each tracer attached, in alternating runs (untraced,
    tracer A, untraced, tracer B, ..., untraced) so that drift hits both sides.

    `tracers` maps a name to a context-manager factory that keeps that tracer attached.
    Tracepoints attached by other processes (another test run on this shared machine)
    tax the 'untraced' figure too: they are counted and reported."""
    binary = build_loop(workdir)
    ns_per_call(binary, calls // 10)  # warm the page cache and the CPU
    samples: dict[str, list[float]] = {"untraced": []}
    others: set[int] = set()

    def untraced() -> None:
        # Ours are all stopped now: whatever is attached belongs to someone else.
        others.update(pid for pid, tp in perf_attachments() if tp.startswith("sys_"))
        samples["untraced"].append(ns_per_call(binary, calls))

    for _ in range(rounds):
        untraced()
        for name, attach in tracers.items():
            with attach():
                samples.setdefault(name, []).append(ns_per_call(binary, calls))
            untraced()
    base = statistics.median(samples["untraced"])
    result: dict = {"calls": calls, "rounds": rounds, "others_attached": len(others),
                    "untraced_ns": round(base, 1), "samples": samples}
    for name, values in samples.items():
        if name != "untraced":
            result[f"{name}_ns"] = round(statistics.median(values), 1)
            result[f"{name}_tax_ns"] = round(statistics.median(values) - base, 1)
    log(f"syscall tax: getppid {base:.0f} ns untraced, "
        + ", ".join(f"{n} {result[f'{n}_ns']:.0f} ns" for n in tracers)
        + (f" ({len(others)} other processes had syscall tracepoints attached)"
           if others else ""))
    return result

