"""Wall-clock text for event times, computed once per second, not once per event."""

from __future__ import annotations

import datetime
import time
from typing import Optional


class SecondCache:
    """Formats the whole-second part of a timestamp once and reuses it within that second."""

    def __init__(self, render) -> None:  # render(seconds: int) -> str
        self._render = render
        self._second = -1
        self._text = ""

    def __call__(self, seconds: int) -> str:
        if seconds != self._second:
            self._second = seconds
            self._text = self._render(seconds)
        return self._text


def hms(seconds: int) -> str:
    """Local HH:MM:SS, the seed's TIME column."""
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def iso_prefix(seconds: int) -> tuple[str, str]:
    """('YYYY-MM-DDTHH:MM:SS', '+HH:MM') in local time, for ISO 8601 with microseconds."""
    moment = datetime.datetime.fromtimestamp(seconds).astimezone()
    stamp = moment.isoformat(timespec="seconds")
    return stamp[:19], stamp[19:]


TIMENS_OFFSETS = "/proc/self/timens_offsets"


def timens_monotonic_offset_ns(path: str = TIMENS_OFFSETS) -> int:
    """How far this time namespace's CLOCK_MONOTONIC is ahead of the host's (0 outside one,
    or on kernels without time namespaces, < 5.6)."""
    try:
        with open(path) as offsets:
            for line in offsets:
                name, seconds, nanoseconds = line.split()
                if name in ("monotonic", "1"):  # CLOCK_MONOTONIC is clock id 1
                    return int(seconds) * 1_000_000_000 + int(nanoseconds)
    except (OSError, ValueError):
        pass
    return 0


class WallClock:
    """The offset that turns bpf_ktime_get_ns() into wall-clock ns, re-read every few seconds.

    bpf_ktime_get_ns() is the host's CLOCK_MONOTONIC. Its distance to the wall clock moves
    when the wall clock is stepped (NTP, an operator) and slews a little all the time, so a
    long run re-anchors every ``period_s``. Inside a time namespace our CLOCK_MONOTONIC is
    shifted from the host's by the namespace's offset: it is added back, so event times are
    right there too. Call ``offset_ns()`` once per batch of records, not per record."""

    def __init__(self, period_s: float = 2.0, wall_ns=time.time_ns,
                 monotonic_ns=time.monotonic_ns, timens_offset_ns: Optional[int] = None) -> None:
        self._period_ns = int(period_s * 1e9)
        self._wall_ns = wall_ns
        self._monotonic_ns = monotonic_ns
        self._timens_ns = (timens_monotonic_offset_ns() if timens_offset_ns is None
                           else timens_offset_ns)
        self._next_ns = 0
        self._offset_ns = 0
        self.offset_ns()

    def measure(self) -> int:
        """wall - host monotonic, from the tightest of three readings (a preemption between
        the two clock reads would skew one of them)."""
        best = None
        for _ in range(3):
            before = self._wall_ns()
            mono = self._monotonic_ns()
            after = self._wall_ns()
            if best is None or after - before < best[0]:
                best = (after - before, (before + after) // 2 - mono)
        assert best is not None
        return best[1] + self._timens_ns

    def offset_ns(self) -> int:
        now = self._monotonic_ns()
        if now >= self._next_ns:
            self._offset_ns = self.measure()
            self._next_ns = now + self._period_ns
        return self._offset_ns
