"""The metrics body written straight from a published state, in the Prometheus text format
(0.0.4) or OpenMetrics 1.0, byte for byte what prometheus_client's encoders make of the
same families (a unit test holds both to that), without building a Sample object (and its
label dict) per line: 4,096 listeners are ~70,000 lines, 9.4 MB; prometheus_client needs
~1 s and ~70 MB for them, this writer a fraction of either.

Every series' label string is escaped once and reused by all its lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from prometheus_client.utils import floatToGoString

from .aggregate import ListenerTotals, slot_upper_us

# The histogram's buckets are log2 slot edges of the kernel's histogram (every other one:
# 8 us, 32 us, ... 8.4 s), so they are exact counts, not interpolations.
BUCKET_SLOTS = tuple(range(3, 24, 2))
BUCKETS = tuple((floatToGoString(slot_upper_us(s) / 1e6), s) for s in BUCKET_SLOTS)

# (name, type, help) in the order they are exposed
ACCEPTS = ("tcpaccept_accepts", "counter", "TCP connections accepted")
LATENCY = ("tcpaccept_queue_latency_seconds", "histogram",
           "Time from ESTABLISHED to accept() (log2 buckets)")
BACKLOG = ("tcpaccept_listen_backlog", "gauge",
           "Listener accept queue length at its last accept or sample")
BACKLOG_MAX = ("tcpaccept_listen_backlog_max", "gauge", "Listener accept queue limit")
DROPS = ("tcpaccept_listen_drops", "counter", "Connections a listener dropped on a full queue")
LOST = ("tcpaccept_lost_events", "counter", "Events that never reached the output")
OVERFLOW = ("tcpaccept_aggregation_overflow", "counter",
            "Items not counted because a bounded table was full")
FAMILIES = (ACCEPTS, LATENCY, BACKLOG, BACKLOG_MAX, DROPS, LOST, OVERFLOW)


@dataclass
class Series:
    """One label set's figures: several kernel keys may share it (labels left out)."""

    accepts: int = 0
    latency_count: int = 0
    latency_sum_ns: int = 0
    slots: Optional[list[int]] = None
    backlog: int = 0
    backlog_max: int = 0
    last_seen_ns: int = -1
    drops: Optional[int] = None  # None: no drop series for this label set

    def add(self, t: ListenerTotals) -> None:
        self.accepts += t.accepts
        self.latency_count += t.latency_count
        self.latency_sum_ns += t.latency_sum_ns
        if self.slots is None:
            self.slots = list(t.latency_slots)
        else:
            self.slots = [a + b for a, b in zip(self.slots, t.latency_slots)]
        self.backlog_max = max(self.backlog_max, t.backlog_max)
        if t.last_seen_ns > self.last_seen_ns:
            self.last_seen_ns, self.backlog = t.last_seen_ns, t.backlog


def buckets(slots: Sequence[int], count: int) -> list[tuple[str, int]]:
    """Cumulative counts at each bucket edge, from the kernel's log2 slots."""
    out, running, next_slot = [], 0, 0
    for le, upto in BUCKETS:
        running += sum(slots[next_slot:upto + 1])
        next_slot = upto + 1
        out.append((le, running))
    out.append(("+Inf", count))
    return out


def go_float(value: float) -> str:
    """floatToGoString, with its common case (an integer count under 10^6: "3.0") fast."""
    if type(value) is int and -1_000_000 < value < 1_000_000:
        return f"{value}.0"
    return floatToGoString(value)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)


def _braced(inner: str) -> str:
    return "{" + inner + "}" if inner else ""


CHUNK_LINES = 2048  # lines encoded at a time: the body is the only full-size copy


class Cancelled(Exception):
    """The render was given up (the server is stopping)."""


class _Writer:
    """Lines appended as text, encoded into one bytearray every CHUNK_LINES."""

    def __init__(self, openmetrics: bool, cancelled: Callable[[], bool]) -> None:
        self.openmetrics = openmetrics
        self.cancelled = cancelled
        self.body = bytearray()
        self.out: list[str] = []

    def append(self, line: str) -> None:
        self.out.append(line)
        if len(self.out) >= CHUNK_LINES:
            self.flush()

    def extend(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.append(line)

    def flush(self) -> None:
        if self.cancelled():  # SIGTERM does not wait for a 9 MB body
            raise Cancelled()
        self.body += "".join(self.out).encode("utf-8")
        self.out.clear()

    def header(self, family: tuple[str, str, str]) -> None:
        name, kind, doc = family
        if not self.openmetrics and kind == "counter":
            name += "_total"
        doc = doc.replace("\\", r"\\").replace("\n", r"\n")
        if self.openmetrics:
            doc = doc.replace('"', r"\"")
        self.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")


def render(label_names: Sequence[str], series: dict[tuple[str, ...], Series],
           lost: Sequence[tuple[str, int]], overflow: Sequence[tuple[str, int]],
           openmetrics: bool, cancelled: Callable[[], bool] = lambda: False) -> bytearray:
    """The whole body for these series (in their order) and counters. A bytearray, to
    save a full copy; nobody changes it after (the server shares it between clients)."""
    g = go_float
    order = sorted(range(len(label_names)), key=lambda i: label_names[i])
    before_le = [i for i in order if label_names[i] < "le"]
    after_le = [i for i in order if label_names[i] > "le"]
    rows = []
    for values, s in series.items():
        plain = _braced(_labels((label_names[i], values[i]) for i in order))
        low = _labels((label_names[i], values[i]) for i in before_le)
        high = _labels((label_names[i], values[i]) for i in after_le)
        rows.append((plain, (low + "," if low else "") + 'le="',
                     '"' + ("," + high if high else ""), s))
    w = out = _Writer(openmetrics, cancelled)
    w.header(ACCEPTS)
    out.extend(f"tcpaccept_accepts_total{plain} {g(s.accepts)}\n"
               for plain, _, _, s in rows if s.slots is not None)
    w.header(LATENCY)
    name = LATENCY[0]
    for plain, le_open, le_close, s in rows:
        if s.slots is None:
            continue
        out.extend(f"{name}_bucket{{{le_open}{le}{le_close}}} {g(count)}\n"
                   for le, count in buckets(s.slots, s.latency_count))
        out.append(f"{name}_count{plain} {g(s.latency_count)}\n"
                   f"{name}_sum{plain} {g(s.latency_sum_ns / 1e9)}\n")
    w.header(BACKLOG)
    out.extend(f"tcpaccept_listen_backlog{plain} {g(s.backlog)}\n" for plain, _, _, s in rows)
    w.header(BACKLOG_MAX)
    out.extend(f"tcpaccept_listen_backlog_max{plain} {g(s.backlog_max)}\n"
               for plain, _, _, s in rows)
    w.header(DROPS)
    out.extend(f"tcpaccept_listen_drops_total{plain} {g(s.drops)}\n"
               for plain, _, _, s in rows if s.drops is not None)
    w.header(LOST)
    out.extend(f'tcpaccept_lost_events_total{{reason="{_escape(reason)}"}} {g(count)}\n'
               for reason, count in lost)
    w.header(OVERFLOW)
    out.extend(f'tcpaccept_aggregation_overflow_total{{map="{table}"}} {g(count)}\n'
               for table, count in overflow)
    if openmetrics:
        out.append("# EOF\n")
    w.flush()
    return w.body
