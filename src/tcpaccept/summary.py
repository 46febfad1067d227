"""Summary mode (-s): per-listener tables every interval, a latency histogram per listener
at exit, all read from the kernel's aggregation maps (bpf/aggregate.bpf.h).

State is bounded: the kernel counts per listening socket (netns, bound address, port,
cgroup) in a map of fixed size; this sink keeps only the previous read of that map (to
print deltas), the previous read of the bounded remotes LRU and one interval's drops (at
most MAX_DROP_ROWS listeners). No latency is stored per accept: percentiles come from the
kernel's log2 histogram (see aggregate.slot_percentile_us: a percentile is reported as the
upper edge of its bucket, which overstates it by less than a factor of 2). The remotes LRU
evicts when full; the output then says how many remotes it pushed out, and the top-remote
counts are lower bounds.
Drops come from the same listener table as the metrics (snapshot.py ``sockets``): each
socket's counter against the previous snapshot's, so a listener that never accepts has its
row; only without that table (the sock_diag fallback) do they arrive as Drop items.
Listeners idle for ``ttl_s`` are deleted from the kernel map (and so from the exit
histograms, which cover the listeners active in the last ttl_s).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, TextIO

from .aggregate import (
    AggregateReader,
    ListenerKey,
    ListenerTotals,
    slot_lower_us,
    slot_max_us,
    slot_percentile_us,
    slot_upper_us,
)
from .model import Container, Drop, Lost
from .output.clock import hms, iso_prefix
from .output.escape import escape_text
from .sink import MAX_DROP_ENTRIES, KernelCountedSink, LostNotices
from .snapshot import DEFAULT_TTL_S, ListenerTable, SocketRow

TOP_REMOTES = 5
MAX_DROP_ROWS = MAX_DROP_ENTRIES
MAX_REMEMBERED_SOCKETS = 65536  # listeners whose drop counts are remembered across reads


def endpoint(laddr: str, lport: int) -> str:
    """addr:port, with IPv6 addresses in brackets."""
    return f"[{laddr}]:{lport}" if ":" in laddr else f"{laddr}:{lport}"


class Log2Histogram:
    """bcc-style power-of-two buckets of microseconds (the kernel's slots: slot k holds
    [2^(k-1), 2^k) us, slot 0 holds 0)."""

    def __init__(self, slots: Sequence[int] = ()) -> None:
        self.buckets: Counter[int] = Counter({k: n for k, n in enumerate(slots) if n})

    def rows(self) -> list[tuple[int, int, int]]:
        """(low, high, count) from the lowest to the highest non-empty bucket."""
        if not self.buckets:
            return []
        return [(slot_lower_us(slot), slot_upper_us(slot) - 1, self.buckets.get(slot, 0))
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


def _delta(now: int, before: int) -> int:
    """A counter since the previous read; a smaller value means it restarted (expired or
    evicted entry), and then all of it is new."""
    return now - before if now >= before else now


@dataclass
class _Drops:
    """One interval's drops of one listening socket (the drop monitor's view)."""

    dropped: int
    backlog: int
    backlog_max: int
    pid: int
    comm: str
    container: Optional[Container]


class SummarySink(KernelCountedSink):
    """Reads the aggregation maps and prints them every `interval` seconds."""

    def __init__(self, out: TextIO, interval: float, as_json: bool, notices: LostNotices,
                 aggregates: AggregateReader,
                 container_of: Optional[Callable[[int], Optional[Container]]] = None,
                 ttl_s: float = DEFAULT_TTL_S, table: Optional[ListenerTable] = None) -> None:
        self.out = out
        self.interval = interval
        self.as_json = as_json
        self._notices = notices
        self.aggregates = aggregates  # the remotes LRU and its counters
        # The listener table (shared with --metrics: one owner of the TTL and the maps).
        self.table = table or ListenerTable(aggregates, ttl_s, container_of)
        self._interval_start = time.monotonic()
        self._previous: dict[ListenerKey, ListenerTotals] = {}
        self._containers: dict[ListenerKey, Optional[Container]] = {}
        self._previous_remotes: dict[tuple[ListenerKey, str], int] = {}
        self._drops: dict[tuple[int, str, int], _Drops] = {}
        self._drops_overflow = 0
        self._socket_dropped: dict[int, int] = {}  # socket inode -> its drops at the last read
        self._overflow = 0

    def count_lost(self, lost: Lost) -> None:
        self._notices.report(lost)

    def count_drop(self, r: Drop) -> None:
        if self.table.sockets_source is not None:
            return  # the listener table's sockets carry the drops (_count_socket_drops)
        self._add_drop(r.netns, r.laddr, r.lport, r.dropped, r.backlog, r.backlog_max,
                       r.pid or 0, r.comm or "?", r.container)

    def _add_drop(self, netns: int, laddr: str, lport: int, dropped: int, backlog: int,
                  backlog_max: int, pid: int, comm: str,
                  container: Optional[Container]) -> None:
        where = (netns, laddr, lport)
        drops = self._drops.get(where)
        if drops is None:
            if len(self._drops) >= MAX_DROP_ROWS:
                self._drops_overflow += 1
                return
            drops = self._drops[where] = _Drops(0, 0, 0, pid, comm, container)
        drops.dropped += dropped
        drops.backlog, drops.backlog_max = backlog, backlog_max

    def _count_socket_drops(self, sockets: Mapping[int, SocketRow]) -> None:
        """The interval's drops: each socket's counter against the previous snapshot's (0
        for a socket first seen now: its counter starts at its first sighting)."""
        before, seen = self._socket_dropped, {}
        for inode, row in sockets.items():
            s = row.state
            seen[inode] = s.dropped
            if s.dropped > before.get(inode, 0):
                self._add_drop(s.netns, s.laddr, s.lport, s.dropped - before.get(inode, 0),
                               s.backlog, s.backlog_max, s.pid, s.comm, row.container)
        for inode, dropped in before.items():  # a socket missing from one read resumes
            if inode not in seen and len(seen) < MAX_REMEMBERED_SOCKETS:
                seen[inode] = dropped
        self._socket_dropped = seen

    def tick(self, now: float) -> None:
        if now - self._interval_start >= self.interval:
            self.flush_interval(now)

    def _read(self) -> dict[ListenerKey, ListenerTotals]:
        """A new snapshot, diffed against the previous one; the interval's backlog peaks
        end here (the next interval's start)."""
        snapshot = self.table.refresh(new_epoch=True)
        if snapshot.sockets is not None:
            self._count_socket_drops(snapshot.sockets)
        self._containers = {key: row.container for key, row in snapshot.listeners.items()}
        self._overflow = snapshot.listeners_overflow
        return {key: row.totals for key, row in snapshot.listeners.items()}

    def flush_interval(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._interval_start, 1e-9)
        self._interval_start = now
        listeners = self._read()
        rows = []
        for key, totals in listeners.items():
            before = self._previous.get(key, ListenerTotals())
            accepts = _delta(totals.accepts, before.accepts)
            if accepts == 0 and (key.netns, key.laddr, key.lport) not in self._drops:
                continue
            slots = tuple(_delta(a, b) for a, b in zip(totals.latency_slots,
                                                       before.latency_slots))
            rows.append(self._row(key, totals, accepts, slots, elapsed))
        self._previous = listeners
        self._attach_drops(rows, elapsed)
        rows.sort(key=lambda r: (-r["accepts"], -r["drops"]))
        top, evicted = self._top_remotes()
        if self.as_json:
            self._write_json({"event": "summary", "interval_s": round(elapsed, 3),
                              "listeners": rows,
                              "top_remotes": [{"raddr": a, "accepts": n} for a, n in top],
                              "remotes_evicted": evicted,
                              "listeners_overflow": self._overflow + self._drops_overflow})
        elif rows:  # a quiet interval prints nothing in text mode
            self._write_table(rows, top, evicted)
        self.out.flush()

    def _container(self, key: ListenerKey) -> Optional[str]:
        container = self._containers.get(key)
        return container.short if container else None

    def _row(self, key: ListenerKey, t: ListenerTotals, accepts: int,
             slots: tuple[int, ...], elapsed: float) -> dict:
        return {
            "laddr": key.laddr, "lport": key.lport, "netns": key.netns, "pid": t.pid,
            "comm": t.comm, "container": self._container(key),
            "accepts": accepts, "accepts_per_s": round(accepts / elapsed, 1),
            "backlog": t.backlog, "backlog_peak": t.backlog_peak,
            "backlog_max": t.backlog_max,
            "queue_latency_p50_us": slot_percentile_us(slots, 0.50),
            "queue_latency_p99_us": slot_percentile_us(slots, 0.99),
            "queue_latency_max_us": slot_max_us(slots),
            "drops": 0,
        }

    def _attach_drops(self, rows: list[dict], elapsed: float) -> None:
        """Drops go to the busiest row of their listening socket (several cgroups may
        accept on one socket), else to a row of their own."""
        drops, self._drops = self._drops, {}
        by_socket: dict[tuple[int, str, int], dict] = {}
        for row in sorted(rows, key=lambda r: -r["accepts"]):
            by_socket.setdefault((row["netns"], row["laddr"], row["lport"]), row)
        for (netns, laddr, lport), d in drops.items():
            row = by_socket.get((netns, laddr, lport))
            if row is None:
                row = {"laddr": laddr, "lport": lport, "netns": netns, "pid": d.pid,
                       "comm": d.comm, "container": d.container.short if d.container else None,
                       "accepts": 0, "accepts_per_s": 0.0, "backlog": d.backlog,
                       "backlog_peak": d.backlog, "backlog_max": d.backlog_max,
                       "queue_latency_p50_us": None, "queue_latency_p99_us": None,
                       "queue_latency_max_us": None, "drops": 0}
                rows.append(row)
            row["drops"] += d.dropped
            row["backlog_peak"] = max(row["backlog_peak"], d.backlog)

    def _top_remotes(self) -> tuple[list[tuple[str, int]], int]:
        current = self.aggregates.read_remotes()
        counts: Counter[str] = Counter()
        for key, count in current.items():
            fresh = _delta(count, self._previous_remotes.get(key, 0))
            if fresh:
                counts[key[1]] += fresh
        self._previous_remotes = current
        return counts.most_common(TOP_REMOTES), self.aggregates.remotes_evicted(len(current))

    def _write_json(self, obj: dict) -> None:
        stamp, offset = iso_prefix(int(time.time()))
        self.out.write(json.dumps({"time": f"{stamp}{offset}", **obj}) + "\n")

    def _write_table(self, rows: list[dict], top: list[tuple[str, int]], evicted: int) -> None:
        w = self.out.write
        w(f"\n{hms(int(time.time()))}\n")
        w(f"{'LISTENER':<46} {'PID':<7} {'COMM':<15} {'ACCEPTS':>8} {'ACC/s':>9} "
          f"{'BL':>11} {'BLPEAK':>6} {'P50(ms)':>9} {'P99(ms)':>9} {'MAX(ms)':>9} "
          f"{'DROPS':>6}\n")
        for r in rows:
            backlog = f"{r['backlog']}/{r['backlog_max']}"
            where = endpoint(r["laddr"], r["lport"])
            w(f"{where:<46} {r['pid']:<7} {escape_text(r['comm']):<15} {r['accepts']:>8} "
              f"{r['accepts_per_s']:>9.1f} {backlog:>11} {r['backlog_peak']:>6} "
              f"{_ms(r['queue_latency_p50_us']):>9} {_ms(r['queue_latency_p99_us']):>9} "
              f"{_ms(r['queue_latency_max_us']):>9} {r['drops']:>6}\n")
        if top:
            w(f"{'TOP REMOTES':<46} {'ACCEPTS':>8}\n")
            for address, count in top:
                w(f"{address:<46} {count:>8}\n")
        if evicted:
            w(f"(remotes table full: {evicted} remotes evicted since start; "
              "remote counts are lower bounds)\n")

    def close(self) -> None:
        self.flush_interval()
        listeners = sorted(self._previous.items(), key=lambda i: (i[0].lport, i[0].laddr))
        for key, totals in listeners:
            histogram = Log2Histogram(totals.latency_slots)
            if not histogram.buckets:
                continue
            if self.as_json:
                self._write_json({
                    "event": "histogram", "laddr": key.laddr, "lport": key.lport,
                    "netns": key.netns, "pid": totals.pid, "comm": totals.comm,
                    "container": self._container(key), "unit": "us",
                    "buckets": [{"low": lo, "high": hi, "count": n}
                                for lo, hi, n in histogram.rows()],
                })
            else:
                self.out.write(f"\nqueue latency, listener {endpoint(key.laddr, key.lport)} "
                               f"(last pid {totals.pid} {escape_text(totals.comm)}):\n")
                self.out.write(histogram.render() + "\n")
        self.out.flush()
        self._notices.close()
