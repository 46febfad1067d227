"""Summary mode: per-listener tables every interval, a latency histogram per listener at exit."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence, TextIO

from .model import Accept, Drop, Item, Lost
from .output.clock import hms, iso_prefix
from .sink import LostNotices

TOP_REMOTES = 5


@dataclass(frozen=True)
class ListenerId:
    laddr: str
    lport: int
    pid: int
    comm: str

    @property
    def endpoint(self) -> str:
        return endpoint(self.laddr, self.lport)


def endpoint(laddr: str, lport: int) -> str:
    """addr:port, with IPv6 addresses in brackets."""
    return f"[{laddr}]:{lport}" if ":" in laddr else f"{laddr}:{lport}"


@dataclass
class ListenerStats:
    """One interval's figures for one listener."""

    accepts: int = 0
    max_backlog: int = 0
    backlog: int = 0
    backlog_max: int = 0
    latencies_us: list[float] = field(default_factory=list)
    drops: int = 0


def percentile(sorted_values: list[float], fraction: float) -> Optional[float]:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class Log2Histogram:
    """bcc-style power-of-two buckets of microseconds."""

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()

    def add(self, value_us: float) -> None:
        self.buckets[max(0, int(value_us)).bit_length()] += 1

    def rows(self) -> list[tuple[int, int, int]]:
        """(low, high, count) from the lowest to the highest non-empty bucket."""
        if not self.buckets:
            return []
        return [((1 << slot) >> 1, (1 << slot) - 1, self.buckets.get(slot, 0))
                for slot in range(min(self.buckets), max(self.buckets) + 1)]

    def render(self, unit: str = "usecs") -> str:
        rows = self.rows()
        peak = max((count for _, _, count in rows), default=0)
        lines = [f"{unit:>24}: count     distribution"]
        for low, high, count in rows:
            stars = round(40 * count / peak) if peak else 0
            lines.append(f"{low:>10} -> {high:<10}: {count:<9} |{'*' * stars:<40}|")
        return "\n".join(lines)


def _ms(value_us: Optional[float]) -> str:
    return "-" if value_us is None else f"{value_us / 1000:.3f}"


class SummarySink:
    """Aggregates accepts (and drops) and prints them every `interval` seconds."""

    def __init__(self, out: TextIO, interval: float, as_json: bool,
                 notices: LostNotices) -> None:
        self.out = out
        self.interval = interval
        self.as_json = as_json
        self._notices = notices
        self._interval_start = time.monotonic()
        self._stats: dict[ListenerId, ListenerStats] = {}
        self._remotes: Counter[str] = Counter()
        self.histograms: dict[ListenerId, Log2Histogram] = {}

    def handle(self, items: Sequence[Item]) -> None:
        if not items:
            return
        kind = type(items[0])
        if kind is Accept:
            self._count_accepts(items)  # type: ignore[arg-type]
        elif kind is Drop:
            self._count_drops(items)  # type: ignore[arg-type]
        elif kind is Lost:
            for lost in items:
                self._notices.report(lost)  # type: ignore[arg-type]

    def _count_accepts(self, accepts: Sequence[Accept]) -> None:
        for e in accepts:
            listener = ListenerId(e.laddr, e.lport, e.pid, e.comm)
            stats = self._stats.get(listener)
            if stats is None:
                stats = self._stats[listener] = ListenerStats()
            stats.accepts += 1
            stats.backlog, stats.backlog_max = e.backlog, e.backlog_max
            stats.max_backlog = max(stats.max_backlog, e.backlog)
            if e.queue_latency_ns is not None:
                latency_us = e.queue_latency_ns / 1000
                stats.latencies_us.append(latency_us)
                self.histograms.setdefault(listener, Log2Histogram()).add(latency_us)
            self._remotes[e.raddr] += 1

    def _count_drops(self, drops: Sequence[Drop]) -> None:
        for r in drops:
            listener = ListenerId(r.laddr, r.lport, r.pid or 0, r.comm or "?")
            stats = self._stats.setdefault(listener, ListenerStats())
            stats.drops += r.dropped
            stats.backlog, stats.backlog_max = r.backlog, r.backlog_max
            stats.max_backlog = max(stats.max_backlog, r.backlog)

    def tick(self, now: float) -> None:
        if now - self._interval_start >= self.interval:
            self.flush_interval(now)

    def flush_interval(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._interval_start, 1e-9)
        self._interval_start = now
        stats, self._stats = self._stats, {}
        remotes, self._remotes = self._remotes, Counter()
        rows = [self._row(listener, s, elapsed) for listener, s in
                sorted(stats.items(), key=lambda item: -item[1].accepts)]
        top = remotes.most_common(TOP_REMOTES)
        if self.as_json:
            self._write_json({"event": "summary", "interval_s": round(elapsed, 3),
                              "listeners": rows,
                              "top_remotes": [{"raddr": a, "accepts": n} for a, n in top]})
        elif rows:  # a quiet interval prints nothing in text mode
            self._write_table(rows, top)
        self.out.flush()

    @staticmethod
    def _row(listener: ListenerId, s: ListenerStats, elapsed: float) -> dict:
        ordered = sorted(s.latencies_us)
        return {
            "laddr": listener.laddr, "lport": listener.lport, "pid": listener.pid,
            "comm": listener.comm, "accepts": s.accepts,
            "accepts_per_s": round(s.accepts / elapsed, 1),
            "backlog": s.backlog, "backlog_peak": s.max_backlog, "backlog_max": s.backlog_max,
            "queue_latency_p50_us": percentile(ordered, 0.50),
            "queue_latency_p99_us": percentile(ordered, 0.99),
            "queue_latency_max_us": ordered[-1] if ordered else None,
            "drops": s.drops,
        }

    def _write_json(self, obj: dict) -> None:
        stamp, offset = iso_prefix(int(time.time()))
        self.out.write(json.dumps({"time": f"{stamp}{offset}", **obj}) + "\n")

    def _write_table(self, rows: list[dict], top: list[tuple[str, int]]) -> None:
        w = self.out.write
        w(f"\n{hms(int(time.time()))}\n")
        w(f"{'LISTENER':<46} {'PID':<7} {'COMM':<15} {'ACCEPTS':>8} {'ACC/s':>9} "
          f"{'BL':>11} {'BLPEAK':>6} {'P50(ms)':>9} {'P99(ms)':>9} {'MAX(ms)':>9} "
          f"{'DROPS':>6}\n")
        for r in rows:
            backlog = f"{r['backlog']}/{r['backlog_max']}"
            where = endpoint(r["laddr"], r["lport"])
            w(f"{where:<46} {r['pid']:<7} {r['comm']:<15} {r['accepts']:>8} "
              f"{r['accepts_per_s']:>9.1f} {backlog:>11} {r['backlog_peak']:>6} "
              f"{_ms(r['queue_latency_p50_us']):>9} {_ms(r['queue_latency_p99_us']):>9} "
              f"{_ms(r['queue_latency_max_us']):>9} {r['drops']:>6}\n")
        if top:
            w(f"{'TOP REMOTES':<46} {'ACCEPTS':>8}\n")
            for address, count in top:
                w(f"{address:<46} {count:>8}\n")

    def close(self) -> None:
        self.flush_interval()
        for listener, histogram in sorted(self.histograms.items(), key=lambda i: i[0].lport):
            if self.as_json:
                self._write_json({
                    "event": "histogram", "laddr": listener.laddr, "lport": listener.lport,
                    "pid": listener.pid, "comm": listener.comm, "unit": "us",
                    "buckets": [{"low": lo, "high": hi, "count": n}
                                for lo, hi, n in histogram.rows()],
                })
            else:
                self.out.write(f"\nqueue latency, listener {listener.endpoint} "
                               f"(pid {listener.pid} {listener.comm}):\n")
                self.out.write(histogram.render() + "\n")
        self.out.flush()
        self._notices.close()
