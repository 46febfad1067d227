"""Cost and completeness: nginx under wrk, untraced and with each tracer, in paired rounds.

Each round runs every traced variant once, in a shuffled order, with an untraced run
before and after each one (U T1 U T2 ... Tn U): a traced run's ratio is its rate over the
mean of its two untraced neighbours, so drift on a shared machine hits both sides."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bench import bpf_stats
from bench.common import REPO, RESULTS, TracerFailed, log
from bench.cpu import CpuMeter, QuietWait
from bench.load import run_wrk
from bench.nginx import Nginx
from bench.tracers import TracerProcess, count_events, scrape_accepts
from bench.variants import UNTRACED, Variant

SCRAPE_WAIT_S = 10.0  # the agent counts in user space today: let it catch up


@dataclass
class RunResult:
    round: int
    position: int
    variant: str
    kind: Optional[str]
    counted: bool
    rate: float
    requests: int
    wrk_errors: int
    nginx_accepts: int  # accepts of the load, stub_status requests excluded
    baseline_rate: Optional[float] = None  # mean of the untraced neighbours' rates
    events: Optional[int] = None  # printed (or scraped) accepts of the load
    events_all: Optional[int] = None  # every event line, other processes included
    lost: Optional[int] = None
    ready_s: Optional[float] = None
    hwm_kb: Optional[int] = None
    returncode: Optional[int] = None
    other_cpu: float = 0.0  # cores used by unrelated processes during the load
    nginx_cpu: float = 0.0  # cores used by nginx (the BPF programs run in its accept())
    tracer_cpu: Optional[float] = None  # cores used by the tracer during the load
    tracer_wakeups: Optional[int] = None  # its voluntary context switches then
    bpf: Optional[dict] = None  # program run time over the load (bpf_stats.delta)
    stderr: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> Optional[float]:
        return self.rate / self.baseline_rate if self.baseline_rate else None


def _scrape(tracer: TracerProcess, lport: int, deadline: float) -> int:
    assert tracer.metrics_port is not None
    while True:
        try:
            return scrape_accepts(tracer.metrics_port, lport)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TracerFailed(f"{tracer.name}: cannot scrape: {exc}") from None
            time.sleep(0.1)


def _scraped(tracer: TracerProcess, lport: int, at_least: Optional[int] = None) -> int:
    """The agent's count for our port; with `at_least`, wait until it gets there (then
    once more, so an overshoot is seen too)."""
    deadline = time.monotonic() + SCRAPE_WAIT_S
    value = _scrape(tracer, lport, deadline)
    if at_least is None:
        return value
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
        value = _scrape(tracer, lport, deadline)
    time.sleep(0.2)
    return _scrape(tracer, lport, deadline + 1)


def one_run(nginx: Nginx, variant: Variant, tool: Path, workdir: Path, seconds: int,
            round_no: int, position: int) -> RunResult:
    tracer = None
    if variant.kind:
        tracer = TracerProcess(variant, tool, workdir, f"r{round_no}-{position}-{variant.name}")
    bpf = None
    try:
        if tracer:
            tracer.start()
            scraped_before = _scraped(tracer, nginx.port) if tracer.metrics_port else 0
        before = nginx.accepts()  # accepted after the attach: traced
        progs_before = bpf_stats.prog_counters(tracer.pid) if tracer else {}
        meter = CpuMeter(nginx.pids, tracer.pid if tracer else None)
        load = run_wrk(nginx.port, seconds)
        cpu = meter.stop()
        time.sleep(0.2)  # connections wrk left queued are accepted before the next one
        after = nginx.accepts()  # one accept queue: nginx takes this one after them
        if tracer:
            bpf = bpf_stats.delta(progs_before, bpf_stats.prog_counters(tracer.pid))
            bpf["accepts"] = after - before  # the load's and the 'after' request's
            if tracer.metrics_port:
                # The 'before' and 'after' requests were traced too.
                scraped = _scraped(tracer, nginx.port, scraped_before + after - before + 1)
    finally:
        if tracer:
            tracer.stop()
    # after - before counts the load's connections plus the 'after' request itself.
    result = RunResult(round_no, position, variant.name, variant.kind, variant.counted,
                       load.rate, load.requests, load.errors, after - before - 1, **cpu)
    if tracer is None:
        return result
    result.bpf = bpf
    result.lost = tracer.lost()
    result.ready_s = round(tracer.ready_s, 4) if tracer.ready_s is not None else None
    result.hwm_kb = tracer.hwm_kb
    result.returncode = tracer.returncode
    result.stderr = tracer.stderr_lines()[:5]
    if tracer.returncode not in (0, -signal.SIGINT):
        result.problems.append(f"exited with {tracer.returncode}")
    if variant.counted:
        assert tracer.out_path is not None
        ours, total, lost_on_stdout = count_events(variant, tracer.out_path, nginx.pids,
                                                   nginx.port)
        result.lost += lost_on_stdout
        result.events = ours - 2  # both stub_status requests were traced too
        result.events_all = total
    elif tracer.metrics_port:
        result.events = scraped - scraped_before - 2
    if result.lost:
        result.problems.append(f"lost {result.lost} events")
    if result.events is not None:
        if result.events + 2 <= 0:
            result.problems.append("no events counted")
        elif result.events != result.nginx_accepts:
            gap = result.nginx_accepts - result.events
            what = "missing" if gap > 0 else "extra"
            result.problems.append(f"{abs(gap)} events {what} vs nginx accepts")
    if tracer.out_path is not None:
        if result.problems:  # kept for a look: which events are missing
            kept = RESULTS / f"gap-{tracer.out_path.name}"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(tracer.out_path), kept)
            result.problems[-1] += f" (output kept in {kept.relative_to(REPO)})"
        else:
            tracer.out_path.unlink()  # up to a few tens of MB each
    return result


def _log_run(result: RunResult) -> None:
    extra = f"; {'; '.join(result.problems)}" if result.problems else ""
    events = f", {result.events} counted" if result.events is not None else ""
    tcpu = f", tracer {result.tracer_cpu:.2f}" if result.tracer_cpu is not None else ""
    log(f"  {result.variant:<11} {result.rate:>9.0f} req/s, {result.nginx_accepts} accepts"
        f"{events}; CPU: nginx {result.nginx_cpu:.2f}{tcpu}, others "
        f"{result.other_cpu:.2f}{extra}")


def paired_rounds(nginx: Nginx, variants: list[Variant], tool: Path, workdir: Path,
                  rounds: int, seconds: int, rng: random.Random, quiet: QuietWait,
                  results: list[RunResult]) -> None:
    """Every traced variant once per round, each between two untraced runs; appends to
    `results` as it goes, so a broken tracer (TracerFailed) leaves what was measured."""
    traced = [v for v in variants if v.kind]
    for r in range(1, rounds + 1):
        order = traced[:]
        rng.shuffle(order)
        log(f"round {r}/{rounds}: untraced between each of {', '.join(v.name for v in order)}")
        sequence = [UNTRACED]
        for variant in order:
            sequence += [variant, UNTRACED]
        first = len(results)
        for position, variant in enumerate(sequence):
            quiet({os.getpid(), *nginx.pids})
            results.append(one_run(nginx, variant, tool, workdir, seconds, r, position))
            _log_run(results[-1])
        this_round = results[first:]
        for i in range(1, len(this_round), 2):
            neighbours = (this_round[i - 1].rate, this_round[i + 1].rate)
            this_round[i].baseline_rate = sum(neighbours) / 2
