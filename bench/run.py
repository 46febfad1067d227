#!/usr/bin/env python3
"""Benchmark (issues 5 and 12): what tracing accept() costs a busy server, against the hook
alone (the floor) and the bpftrace peer; what the BPF programs cost per accept; the
machine-wide syscall tax; whether every accept is printed or counted; how fast the
user-space pipeline is; how quickly and leanly the tracer starts.

    python bench/run.py [--rounds 5] [--seconds 5] [--json out.json] [--quick]

Stdlib only, plus the project's own package (taken from src/ when not installed) and
tests/support/child.py. Needs root; installs nginx-light, wrk, bpftrace and bpftool from
Debian if they are missing. See bench/README.md for what each figure means.

Exit status: 0 when everything worked (missed performance targets are reported, not
fatal); 1 when something is broken: tcpaccept did not start or exited with an error, a
counted run counted no events, lost events, or counted a different number of accepts than
nginx accepted; 2 when the bench itself could not run (no nginx, no load, ...).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the bench package and tests/support/child.py
try:
    import tcpaccept  # noqa: F401
except ImportError:  # run with a Python outside the venv: use the work tree's package
    sys.path.insert(1, str(REPO / "src"))

from bench import report, report_cost  # noqa: E402
from bench.bpf_stats import RunTimeStats  # noqa: E402
from bench.common import (  # noqa: E402
    DEFAULT_JSON,
    DEFAULT_TOOL,
    BenchError,
    TracerFailed,
    ensure_tools,
    log,
)
from bench.cost import RunResult, paired_rounds  # noqa: E402
from bench.cpu import QuietWait  # noqa: E402
from bench.load import run_wrk  # noqa: E402
from bench.nginx import Nginx  # noqa: E402
from bench.pipeline import pipeline  # noqa: E402
from bench.startup import StartSample, start_sample  # noqa: E402
from bench.syscall_tax import syscall_tax  # noqa: E402
from bench.tracers import attached  # noqa: E402
from bench.variants import VARIANTS_FULL, VARIANTS_QUICK, Variant  # noqa: E402


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="rounds of all variants (default 5)")
    p.add_argument("--seconds", type=int, default=5, help="wrk duration per run (default 5)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="PATH",
                   help=f"results file (default {DEFAULT_JSON.relative_to(REPO)})")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke test: 1 round of 2 s loads, counted runs, the floor and "
                        "the aggregating modes, 20k records")
    p.add_argument("--records", type=int, default=500_000, help="pipeline records")
    p.add_argument("--seed", type=int, default=None, help="order shuffle seed (default: random)")
    p.add_argument("--tool", type=Path, default=DEFAULT_TOOL, help="tcpaccept executable")
    p.add_argument("--quiet-wait", type=float, default=None, metavar="SECONDS",
                   help="at most this long in all, wait before runs for other processes to "
                        "use < 0.1 CPU (default 600; 0 with --quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.records = 1, 2, 20_000
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 600.0
    if args.rounds < 1 or args.seconds < 1 or args.records < 100:
        p.error("--rounds, --seconds must be >= 1 and --records >= 100")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    return args


@dataclass
class Measured:
    results: list[RunResult] = field(default_factory=list)  # the cost runs
    starts: list[StartSample] = field(default_factory=list)
    tax: dict = field(default_factory=dict)  # the syscall tax
    broken: list[str] = field(default_factory=list)  # what makes the exit status 1


def measure(args: argparse.Namespace, variants: list[Variant], workdir: Path) -> Measured:
    """The kernel-side measurements: cost rounds, start samples, syscall tax. A broken
    tracer ends them; what was measured until then is kept."""
    done = Measured()
    quiet = QuietWait(args.quiet_wait)
    nginx = Nginx(workdir)
    try:
        nginx.start()
        log(f"nginx on 127.0.0.1:{nginx.port} (pids {sorted(nginx.pids)}), {args.rounds} "
            f"round(s) x {2 * len(variants) - 1} runs x {args.seconds} s, seed {args.seed}")
        if not args.quick:
            run_wrk(nginx.port, 2)  # warm-up, not reported
        paired_rounds(nginx, variants, args.tool, workdir, args.rounds, args.seconds,
                      random.Random(args.seed), quiet, done.results)
    except TracerFailed as exc:
        done.broken.append(str(exc))
        return done
    finally:
        nginx.stop()
    try:
        text, peer = Variant("text", "text"), Variant("peer", "peer")
        for i in range(args.rounds):
            for variant in (text, peer) if i % 2 == 0 else (peer, text):
                quiet(set())
                done.starts.append(start_sample(variant, args.tool))
        tracers = {name: (lambda v=v: attached(v, args.tool, workdir, f"tax-{v.name}"))
                   for name, v in (("tcpaccept", Variant("floor", "floor")), ("peer", peer))}
        done.tax = syscall_tax(workdir, tracers, rounds=1 if args.quick else 3,
                               calls=1_000_000 if args.quick else 3_000_000)
    except TracerFailed as exc:
        done.broken.append(str(exc))
    return done


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    variants = VARIANTS_QUICK if args.quick else VARIANTS_FULL
    started = time.time()
    try:
        ensure_tools(args.tool)
    except (BenchError, subprocess.CalledProcessError) as exc:
        log(f"cannot run: {exc}")
        return 2
    with RunTimeStats() as stats, tempfile.TemporaryDirectory(prefix="tcpaccept-bench-") as tmp:
        try:
            done = measure(args, variants, Path(tmp))
        except BenchError as exc:
            log(f"cannot run: {exc}")
            return 2
    results, starts, broken = done.results, done.starts, done.broken
    if broken and not results:
        for problem in broken:
            log(f"BROKEN: {problem}")
        report.write_json(args, {}, [], results, starts, started, broken)
        return 1
    pipe = pipeline(args.records, 1 if args.quick else 3)
    rows, figures = report_cost.cost_rows(results, variants)
    rows += report_cost.cpu_rows(results, variants)
    bpf, figures["bpf"] = report_cost.bpf_rows(results, variants, stats.error)
    complete, problems = report_cost.completeness_rows(results, variants)
    broken += problems
    rows += bpf + complete
    if done.tax:
        rows += report.syscall_rows(done.tax)
        figures["syscall_tax"] = done.tax
    rows += report.pipeline_rows(pipe)
    figures["pipeline"] = pipe
    start, figures["start"] = report.start_rows(starts, results)
    rows += start
    report.print_table(rows)
    report.write_json(args, figures, rows, results, starts, started, broken)
    if any(r.wrk_errors for r in results):
        log("note: wrk reported socket errors or non-2xx replies (see the JSON)")
    for problem in broken:
        log(f"BROKEN: {problem}")
    log(f"wrote {args.json}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
