"""The table: one row per figure (value, target, verdict), and the JSON document."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

from bench.load import WRK_ARGS
from bench.variants import LABELS

# Targets. Performance targets never change the exit status.
TARGET_TEXT_EPS = 400_000  # issue 22 (issue 5: 300,000)
TARGET_JSON_EPS = 200_000
TARGET_START_S = 0.15  # issue 22
TARGET_RSS_MB = 40.0
TARGET_BPF_NS = 500  # issue 12: the accept path per accept (bpf_stats)


@dataclass
class Row:
    figure: str
    value: str
    target: str = ""
    verdict: str = "info"  # PASS, FAIL, MISS (performance target missed), NOISY, info


def median_or_none(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def pipeline_rows(pipe: dict) -> list[Row]:
    rows = []
    for key, label, target in (("text_eps", "pipeline text events/s (batch 100)",
                                TARGET_TEXT_EPS),
                               ("json_eps", "pipeline JSON events/s (batch 100)",
                                TARGET_JSON_EPS)):
        rows.append(Row(label, f"{pipe[key]:,.0f}", f">= {target:,}",
                        verdict(pipe[key] >= target)))
    rows.append(Row("pipeline text events/s (batch 1: flush per event)",
                    f"{pipe['text_eps_batch1']:,.0f}"))
    rows.append(Row("decode only events/s", f"{pipe['decode_eps']:,.0f}"))
    return rows


def syscall_rows(tax: dict) -> list[Row]:
    noisy = tax["others_attached"] > 0
    note = f" ({tax['others_attached']} other tracers attached)" if noisy else ""
    rows = [Row("syscall tax: getppid() ns/call, untraced (median)",
                f"{tax['untraced_ns']:.0f} ns{note}", "", "NOISY" if noisy else "info")]
    peer = tax.get("peer_tax_ns")
    for name, label in (("tcpaccept", "tcpaccept attached (any mode)"),
                        ("peer", "bpftrace peer attached")):
        if f"{name}_ns" in tax:
            # Issue 22: no more than the peer, which attaches to the same tracepoints.
            judged = name == "tcpaccept" and peer is not None
            rows.append(Row(f"syscall tax: getppid() ns/call, {label}",
                            f"{tax[f'{name}_ns']:.0f} ns (+{tax[f'{name}_tax_ns']:.0f})",
                            "<= the peer's" if judged else "",
                            verdict(tax[f"{name}_tax_ns"] <= peer) if judged else "info"))
    return rows


def start_rows(starts: list, results: list) -> tuple[list[Row], dict]:
    rows, figures = [], {}
    for kind in ("text", "peer"):
        samples = [s for s in starts if s.kind == kind]
        if not samples:
            continue
        banner = statistics.median(s.banner_s for s in samples)
        first = statistics.median(s.first_event_s for s in samples)
        rss = max(max(s.hwm_kb or 0, s.maxrss_kb or 0) for s in samples) / 1024
        is_tool = kind == "text"
        name = "tcpaccept" if is_tool else "bpftrace peer"
        rows.append(Row(f"{name}: exec -> banner (median)", f"{banner:.3f} s",
                        f"<= {TARGET_START_S} s" if is_tool else "",
                        verdict(banner <= TARGET_START_S) if is_tool else "info"))
        rows.append(Row(f"{name}: exec -> first event (median)", f"{first:.3f} s"))
        rows.append(Row(f"{name}: peak RSS, idle", f"{rss:.1f} MB",
                        f"<= {TARGET_RSS_MB:.0f} MB" if is_tool else "",
                        verdict(rss <= TARGET_RSS_MB) if is_tool else "info"))
        figures[f"{kind}_start"] = {"banner_s": banner, "first_event_s": first,
                                    "rss_idle_mb": rss}
    for kind, label in LABELS.items():
        under_load = [r.hwm_kb for r in results if r.kind == kind and r.hwm_kb]
        if not under_load:
            continue
        peak = max(under_load) / 1024
        is_tool = kind != "peer"
        rows.append(Row(f"{label}: peak RSS under load", f"{peak:.1f} MB",
                        f"<= {TARGET_RSS_MB:.0f} MB" if is_tool else "",
                        verdict(peak <= TARGET_RSS_MB) if is_tool else "info"))
        figures[f"{kind}_rss_load_mb"] = peak
    return rows, figures


def print_table(rows: list[Row]) -> None:
    w1 = max(len(r.figure) for r in rows)
    w2 = max(len(r.value) for r in rows)
    w3 = max(len(r.target) for r in rows)
    print(f"{'figure':<{w1}}  {'value':<{w2}}  {'target':<{w3}}  result")
    print(f"{'-' * w1}  {'-' * w2}  {'-' * w3}  ------")
    for r in rows:
        print(f"{r.figure:<{w1}}  {r.value:<{w2}}  {r.target:<{w3}}  {r.verdict}")


def write_json(args, figures: dict, rows: list[Row], results: list, starts: list,
               started: float, broken: list[str]) -> None:
    doc = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds_total": round(time.time() - started, 1),
            "kernel": platform.release(), "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "quick": args.quick, "rounds": args.rounds,
            "seconds": args.seconds, "records": args.records, "seed": args.seed,
            "tool": str(args.tool),
            "wrk": f"wrk {' '.join(WRK_ARGS)} -d{{seconds}}s",
        },
        "ok": not broken,
        "broken": list(broken),
        "figures": figures,
        "table": [asdict(r) for r in rows],
        "runs": [asdict(r) for r in results],
        "start_samples": [asdict(s) for s in starts],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
