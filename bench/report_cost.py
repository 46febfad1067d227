"""Rows for the cost runs: request rate and ratios (to untraced and to the floor), where the
CPU goes, what the BPF programs cost per accept, and whether every accept was counted."""

from __future__ import annotations

import statistics
from typing import Optional

from bench.cost import RunResult
from bench.report import TARGET_BPF_NS, Row, median_or_none, verdict
from bench.variants import Variant

# Issue 12: how far below the floor (the hook alone) each mode may be; issue 5: at least
# these ratios to untraced, and never below the bpftrace peer.
BELOW_FLOOR = {"summary": 0.01, "metrics": 0.01, "text": 0.03, "json": 0.05}
ISSUE5_RATIO = {"text": 0.97, "json": 0.95}
# Issue 22: the tracer's CPU per event.
PER_EVENT_US = {"text": 2.0, "json": 3.0}


def _spread(values: list[float]) -> str:
    return f" [{min(values):.3f}..{max(values):.3f}]" if len(values) > 1 else ""


def _cost_variants(variants: list[Variant]) -> dict[str, str]:
    """kind -> the variant whose ratio is that kind's cost figure: the /dev/null run, or
    the counted one when there is no other (--quick)."""
    chosen: dict[str, str] = {}
    for v in variants:
        if v.kind and (not v.counted or v.kind not in chosen):
            chosen[v.kind] = v.name
    return chosen


def _ratios(results: list[RunResult], name: str) -> dict[int, float]:
    return {r.round: r.ratio for r in results if r.variant == name and r.ratio}


def cost_rows(results: list[RunResult], variants: list[Variant]) -> tuple[list[Row], dict]:
    rows: list[Row] = []
    figures: dict = {}
    untraced = median_or_none([r.rate for r in results if r.kind is None])
    rows.append(Row("nginx req/s, untraced (median)", f"{untraced:,.0f}"))
    figures["untraced_rps"] = untraced
    other = [r.other_cpu for r in results]
    figures["other_cpu_cores"] = {"median": statistics.median(other), "max": max(other)}
    rows.append(Row("other processes' CPU during loads (median, max)",
                    f"{statistics.median(other):.2f}, {max(other):.2f} cores", "~0",
                    "NOISY" if max(other) > 0.1 else "info"))

    chosen = _cost_variants(variants)
    floor_by_round = _ratios(results, chosen["floor"]) if "floor" in chosen else {}
    floor = median_or_none(list(floor_by_round.values()))
    peer = median_or_none(list(_ratios(results, chosen["peer"]).values())) \
        if "peer" in chosen else None
    for v in (v for v in variants if v.kind):
        by_round = _ratios(results, v.name)
        if not by_round:  # a broken tracer ended the runs before this one
            continue
        ratio = statistics.median(by_round.values())
        to_floor = [x / floor_by_round[r] for r, x in by_round.items() if r in floor_by_round]
        rate = median_or_none([r.rate for r in results if r.variant == v.name])
        value = f"{rate:,.0f}; {ratio:.3f}{_spread(list(by_round.values()))}"
        if to_floor and v.kind != "floor":
            value += f"; {statistics.median(to_floor):.3f} of floor"
        target, result = "", "info"
        if chosen.get(v.kind) == v.name and v.kind in BELOW_FLOOR and floor is not None:
            least = floor - BELOW_FLOOR[v.kind]
            target = f">= floor-{BELOW_FLOOR[v.kind]:.2f} = {least:.3f}"
            ok = ratio >= least
            if v.kind in ISSUE5_RATIO:
                target += f", >= {ISSUE5_RATIO[v.kind]}"
                ok = ok and ratio >= ISSUE5_RATIO[v.kind]
                if peer is not None:
                    target += f", >= peer {peer:.3f}"
                    ok = ok and ratio >= peer
            result = verdict(ok)
        rows.append(Row(f"{v.label}: req/s; ratio to untraced", value, target, result))
        figures[f"{v.name}_rps"] = rate
        figures[f"{v.name}_ratio"] = ratio
        figures[f"{v.name}_ratios"] = [round(x, 4) for x in by_round.values()]
        if to_floor:
            figures[f"{v.name}_ratio_to_floor"] = statistics.median(to_floor)
    return rows, figures


def cpu_rows(results: list[RunResult], variants: list[Variant]) -> list[Row]:
    """Where the cost goes, per accepted connection."""
    rows = []
    for v in variants:
        runs = [r for r in results if r.variant == v.name]
        if not runs:
            continue
        per_req = statistics.median(r.nginx_cpu / r.rate * 1e6 for r in runs if r.rate)
        value = f"nginx {per_req:.1f} us/req"
        if v.kind:
            cores = statistics.median(r.tracer_cpu or 0 for r in runs)
            per_event = statistics.median((r.tracer_cpu or 0) / r.rate * 1e6
                                          for r in runs if r.rate)
            wakeups = statistics.median((r.tracer_wakeups or 0) / max(r.nginx_accepts, 1)
                                        for r in runs)
            value += (f"; tracer {cores:.2f} cores = {per_event:.1f} us/event, "
                      f"{wakeups:.2f} wakeups/event")
            if v.is_tool and v.kind in PER_EVENT_US:
                rows.append(Row(f"CPU: {v.label} (medians)", value,
                                f"<= {PER_EVENT_US[v.kind]:.0f} us/event",
                                verdict(per_event <= PER_EVENT_US[v.kind])))
                continue
        rows.append(Row(f"CPU: {v.label} (medians)", value))
    return rows


def _accept_path(run: RunResult) -> dict[str, dict]:
    """The programs that ran for (nearly) every accept of the load. The others ran for
    something else on the machine (io_uring requests, another process's accept())."""
    accepts = (run.bpf or {}).get("accepts") or 0
    return {name: prog for name, prog in (run.bpf or {}).get("programs", {}).items()
            if accepts and prog["runs"] >= accepts / 2}


# Runs on every TCP state change of every socket (both ends of a loopback connection:
# ~10 per accept), not once per accept: many runs per accept are its nature, not noise.
STATE_CHANGE_PROGRAMS = {"stamp_established"}


def bpf_rows(results: list[RunResult], variants: list[Variant],
             stats_error: Optional[str]) -> tuple[list[Row], dict]:
    """What one accept pays in BPF programs (bpf_stats): each accept-path program's run
    time over the window divided by nginx's accepts, so a program that runs several times
    per connection (the state-change stamp) counts every run. The programs also run for
    every other process's accepts on this shared machine: a program with more than 3 runs
    per accept (other than the state-change stamp) makes the figure NOISY. Each run also
    carries the stats' own two clock reads (~25-50 ns here): the figure is an upper bound."""
    if stats_error:
        return [Row("BPF ns per accept (bpf_stats)", f"not measured: {stats_error}")], {}
    rows, figures = [], {}
    for v in (v for v in variants if v.kind):
        runs = [r for r in results if r.variant == v.name and r.bpf and r.bpf["accepts"]]
        if not runs:
            continue
        per_accept = statistics.median(
            sum(p["ns"] for p in _accept_path(r).values()) / r.bpf["accepts"]  # type: ignore[index]
            for r in runs)
        runs_per_accept: dict[str, list[float]] = {}
        ns_per_run: dict[str, list[float]] = {}
        for r in runs:
            for name, prog in _accept_path(r).items():
                runs_per_accept.setdefault(name, []).append(
                    prog["runs"] / r.bpf["accepts"])  # type: ignore[index]
                ns_per_run.setdefault(name, []).append(prog["ns_per_run"])
        each = {name: (statistics.median(runs_per_accept[name]), statistics.median(ns))
                for name, ns in sorted(ns_per_run.items())}
        progs = ", ".join(f"{name} {n:.1f} x {ns:,.0f}" for name, (n, ns) in each.items())
        noisy = any(prog["runs"] > 3 * r.bpf["accepts"]  # type: ignore[index]
                    for r in runs for name, prog in _accept_path(r).items()
                    if name not in STATE_CHANGE_PROGRAMS)
        result = verdict(per_accept <= TARGET_BPF_NS) if v.is_tool else "info"
        rows.append(Row(f"BPF: {v.label}: ns per accept (median)",
                        f"{per_accept:,.0f} ns (runs/accept x ns/run: {progs})",
                        f"<= {TARGET_BPF_NS} ns" if v.is_tool else "",
                        "NOISY" if noisy else result))
        figures[f"{v.name}_bpf_ns_per_accept"] = per_accept
        figures[f"{v.name}_bpf_ns_per_run"] = {name: ns for name, (_n, ns) in each.items()}
        figures[f"{v.name}_bpf_runs_per_accept"] = {name: n for name, (n, _ns) in each.items()}
    return rows, figures


def completeness_rows(results: list[RunResult],
                      variants: list[Variant]) -> tuple[list[Row], list[str]]:
    """Every traced run: no loss, and, where counted, exactly nginx's accepts. A failing
    tcpaccept run is 'broken' (exit 1); a failing peer run is only shown."""
    rows, broken = [], []
    for v in (v for v in variants if v.kind):
        runs = [r for r in results if r.variant == v.name]
        if not runs:
            continue
        lost = sum(r.lost or 0 for r in runs)
        ok = [r for r in runs if not r.problems]
        if v.exact:
            events = sum(r.events or 0 for r in runs)
            accepts = sum(r.nginx_accepts for r in runs)
            what = {"metrics": "scraped", "summary": "tabled"}.get(v.kind or "", "printed")
            value = (f"{len(ok)}/{len(runs)} rounds exact: {events:,}/{accepts:,} "
                     f"{what}/accepted, lost {lost}")
            if v.counted:
                value += f" ({sum((r.events_all or 0) - (r.events or 0) - 2 for r in runs)}"
                value += " other lines)"
        else:
            value = f"{len(ok)}/{len(runs)} rounds ok: lost {lost} (not counted)"
        failing = [f"r{r.round}: {'; '.join(r.problems)}" for r in runs if r.problems]
        if failing:  # the first in the table, all of them in the JSON and on stderr
            more = f" (and {len(failing) - 1} more rounds)" if len(failing) > 1 else ""
            value += f" — {failing[0]}{more}"
            if v.is_tool:
                broken += [f"{v.name} round {f}" for f in failing]
        rows.append(Row(f"complete: {v.label}", value,
                        "exact, 0 lost" if v.exact else "0 lost",
                        "FAIL" if failing else "PASS"))
    return rows, broken
