#!/usr/bin/env python3
"""io_uring tax (issue 11): what the tracepoint method's io_uring hooks cost io_uring work
that is not an accept, in ns per completion, with the NOP loop of
tests/support/uring/nop_loop.c (batches of 32 IORING_OP_NOP, one io_uring_enter each).

    python bench/iouring_tax.py [--nops 2000000] [--rounds 7] [--smoke] [--json out.json]

Four variants, interleaved in each round so drift hits all alike:
  untraced      no tracer
  no-io-uring   tcpaccept --probe tracepoint --no-io-uring (the syscall hooks only)
  io_uring      tcpaccept --probe tracepoint (io_uring_submit_req + io_uring_complete)
  floor         no tracer, near-empty programs on the same two tracepoints
                (bench/iouring_floor.bpf.c, built with clang): the kernel's dispatch cost
It prints each variant's median CPU ns per NOP (the loop's user + system time, where the
tracepoints run: other load on the machine inflates wall time, much less this) and the
tax: the median over rounds of (variant - untraced) from the same round; wall ns as well.
Then, with BPF run-time stats briefly on, the programs' own run time per invocation as
the kernel counts it (stats add their own clock reads: an upper bound).

Needs root, gcc and liburing-dev (the loop is built like the tests build their servers).
Exit status 0 when it measured, 1 when a tracer failed, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "src"))

from bench.bpf_stats import RunTimeStats  # noqa: E402
from tests.support.uring import binary  # noqa: E402

BANNER = "Tracing TCP accepts. Hit Ctrl-C to end."
VARIANTS = {
    "untraced": None,
    "no-io-uring": ["--probe", "tracepoint", "--no-io-uring"],
    "io_uring": ["--probe", "tracepoint"],
    "floor": None,
}
FLOOR_SOURCE = REPO / "bench" / "iouring_floor.bpf.c"
FLOOR_PROGRAMS = ("floor_submit_req", "floor_complete")
PROGRAMS = ("iouring_complete", "iouring_submit_req")  # names as the kernel keeps them
BPF_STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


class Tracer:
    """tcpaccept running with stdout discarded, attached once its banner is printed."""

    def __init__(self, args: list[str]) -> None:
        argv = [sys.executable, "-m", "tcpaccept.cli", "--json", *args]
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=env)
        assert self.proc.stderr
        line = self.proc.stderr.readline()
        if BANNER not in line:
            self.proc.kill()
            raise RuntimeError(f"tcpaccept {' '.join(args)} did not start: "
                               f"{line}{self.proc.stderr.read()}")

    def stop(self) -> None:
        self.proc.terminate()
        rc = self.proc.wait(20)
        if rc != 0:
            raise RuntimeError(f"tcpaccept exited with {rc}")


def nop_loop(program: Path, nops: int) -> dict[str, float]:
    """{"ns_per_nop": wall, "cpu_ns_per_nop": CPU time} of one loop."""
    out = subprocess.run([str(program), str(nops)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


class Floor:
    """The near-empty programs, loaded and attached for one run."""

    def __init__(self, obj_path: Path) -> None:
        from tcpaccept import libbpf

        self.obj = libbpf.BpfObject(str(obj_path))
        self.obj.load()
        self.links = [self.obj.program(name).attach() for name in FLOOR_PROGRAMS]

    def stop(self) -> None:
        for link in self.links:
            link.close()
        self.obj.close()


def build_floor(into: Path) -> Path:
    target = into / "iouring_floor.bpf.o"
    arch = os.uname().machine
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf",
                    f"-D__TARGET_ARCH_{'x86' if arch == 'x86_64' else arch}",
                    f"-I/usr/include/{arch}-linux-gnu", "-c", str(FLOOR_SOURCE),
                    "-o", str(target)], check=True, capture_output=True, text=True)
    return target


def measure(program: Path, floor: Path, nops: int,
            rounds: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, args in VARIANTS.items():
            hooks = Tracer(args) if args else Floor(floor) if name == "floor" else None
            try:
                results[name].append(nop_loop(program, nops))
            finally:
                if hooks:
                    hooks.stop()
    return results


def tax(values: list[dict[str, float]], base: list[dict[str, float]],
        key: str) -> tuple[float, float, list[float]]:
    """(median value, median same-round difference to base, every difference)."""
    differences = [v[key] - b[key] for v, b in zip(values, base)]
    return statistics.median(v[key] for v in values), statistics.median(differences), differences


def loaded_programs() -> list[dict]:
    return json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                     text=True, check=True).stdout)


def program_cost(program: Path, nops: int) -> dict[str, Optional[float]]:
    """ns per invocation of each io_uring program, from the kernel's BPF run-time stats."""
    # BPF_ENABLE_STATS (bench/bpf_stats.py): on while the fd is open, counted with other
    # users; the sysctl would be one global switch shared with everyone on the machine.
    with RunTimeStats() as stats:
        if stats.error:
            return {name: None for name in PROGRAMS}
        tracer = Tracer(VARIANTS["io_uring"] or [])
        try:
            nop_loop(program, nops)
            shown = loaded_programs()
        finally:
            tracer.stop()
    cost: dict[str, Optional[float]] = {}
    for name in PROGRAMS:
        progs = [p for p in shown if p.get("name", "")[:15] == name[:15] and p.get("run_cnt")]
        # The busiest one is ours (another tracer on the box would have fewer NOPs).
        best = max(progs, key=lambda p: p["run_cnt"], default=None)
        cost[name] = best["run_time_ns"] / best["run_cnt"] if best else None
    return cost


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nops", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="a quick run for CI (~5 s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.nops, args.rounds = 200_000, 1
    if os.geteuid() != 0:
        print("iouring_tax: needs root (it loads BPF programs)", file=sys.stderr)
        return 2
    try:
        program = binary("nop_loop")
    except AssertionError as exc:
        print(f"iouring_tax: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    # Another tracer's io_uring hooks would tax the "untraced" runs too: say so.
    others = sum(p.get("name", "").startswith("iouring_comple") for p in loaded_programs())
    if others:
        print(f"note: {others} io_uring_complete hook(s) of other tracers are loaded: "
              "every variant pays for them", file=sys.stderr)
    if BPF_STATS_SYSCTL.read_text().strip() != "0":
        print("note: kernel.bpf_stats_enabled is on: every BPF program run also pays two "
              "clock reads, the tax shown includes them", file=sys.stderr)
    try:
        with tempfile.TemporaryDirectory(prefix="iouring-tax-") as tmp:
            results = measure(program, build_floor(Path(tmp)), args.nops, args.rounds)
        per_program = program_cost(program, args.nops)
    except subprocess.CalledProcessError as exc:
        print(f"iouring_tax: {' '.join(exc.cmd[:1])} failed: {exc.stderr}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"iouring_tax: {exc}", file=sys.stderr)
        return 1
    base = results["untraced"]
    print(f"io_uring NOP loop: {args.nops} NOPs x {args.rounds} rounds, "
          f"kernel {os.uname().release}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<12} {'CPU ns/NOP':>10} {'tax':>7}  {'[min..max]':<16} "
          f"{'wall ns/NOP':>11} {'tax':>7}")
    figures: dict[str, object] = {"nops": args.nops, "rounds": args.rounds, "raw": results}
    for name, values in results.items():
        cpu, cpu_tax, cpu_taxes = tax(values, base, "cpu_ns_per_nop")
        wall, wall_tax, _ = tax(values, base, "ns_per_nop")
        spread = f"[{min(cpu_taxes):.1f}..{max(cpu_taxes):.1f}]"
        print(f"{name:<12} {cpu:>10.1f} {cpu_tax:>7.1f}  {spread:<16} {wall:>11.1f} "
              f"{wall_tax:>7.1f}")
        figures[name] = {"cpu_ns_per_nop": cpu, "cpu_tax_ns": cpu_tax, "ns_per_nop": wall,
                         "tax_ns": wall_tax}
    for name, ns in per_program.items():
        shown = f"{ns:.1f} ns per run" if ns is not None else "not seen"
        print(f"BPF {name}: {shown} (bpf_stats, includes the stats' own clock reads)")
    figures["bpf_stats_ns_per_run"] = per_program
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
