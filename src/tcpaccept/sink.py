"""The sink interface: where decoded items go. Data flows one way, loop -> sinks.

A sink has three methods and no others: ``handle(items)`` for a batch of model objects
(``Accept``, ``Drop``, ``Lost``), ``tick(now)`` on every loop turn (interval output), and
``close()`` once at the end (final tables, flushes). A tee is just a sink that forwards.

Each batch holds items of one type (the loop hands over accepts, drops and lost notices
separately), so a sink dispatches once per batch, not once per item: the hot path stays a
list comprehension.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence, TextIO

from .diagnostics import RateLimit
from .model import Drop, Item, Lost

OUTPUT_STALLED = "output stalled"  # Lost.reason of lines the reader never took


class Sink(Protocol):
    def handle(self, items: Sequence[Item]) -> None: ...
    def tick(self, now: float) -> None: ...
    def close(self) -> None: ...


# Drop entries a kernel-counting sink keeps (one per listening socket or label set); more are
# counted as overflow, never stored.
MAX_DROP_ENTRIES = 4096


class KernelCountedSink:
    """``handle`` of the sinks whose accepts the kernel counts (summary, metrics): drops and
    lost events go to ``count_drop`` / ``count_lost``; Accept items (lines printed too)
    are ignored, the kernel has counted them already."""

    def handle(self, items: Sequence[Item]) -> None:
        if not items:
            return
        kind = type(items[0])
        if kind is Drop:
            for drop in items:
                self.count_drop(drop)  # type: ignore[arg-type]
        elif kind is Lost:
            for lost in items:
                self.count_lost(lost)  # type: ignore[arg-type]

    def count_drop(self, drop: Drop) -> None:
        raise NotImplementedError

    def count_lost(self, lost: Lost) -> None:
        raise NotImplementedError


class Tee:
    """Forwards every call to each sink in order."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    def handle(self, items: Sequence[Item]) -> None:
        for sink in self.sinks:
            sink.handle(items)

    def tick(self, now: float) -> None:
        for sink in self.sinks:
            sink.tick(now)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class LostNotices:
    """Says on stderr what never reached the output, as it happens and in total at the end:
    `Lost N events` for the kernel ring buffer, `Lost N events (output stalled)` for a reader
    that stopped reading, `Lost N summaries (output stalled)` for whole reports. Output
    sinks own one and pass their Lost items to it. At most one line per second per kind
    (a stall lasts; one line a loop turn would fill stderr): the counts in between are
    added to the next line, so the lines still sum to the total."""

    def __init__(self, err: TextIO, stalls_to: Optional[Callable[[Lost], None]] = None
                 ) -> None:
        self.err = err
        self.total = 0
        self.summaries = 0
        self._limit = RateLimit()
        # The kernel's losses reach every sink through the Tee; an output stall is found
        # by the output sink itself, so it is handed on (to the metrics) from here.
        self.stalls_to = stalls_to

    def report(self, lost: Lost) -> None:
        if lost.count <= 0:
            return
        if self.stalls_to is not None and lost.reason == OUTPUT_STALLED:
            self.stalls_to(lost)
        self.total += lost.count
        why = "" if lost.reason == "ring buffer" else f" ({lost.reason})"
        self._say(f"events{why}", self._limit.add(f"events{why}", lost.count))

    def report_summaries(self, count: int) -> None:
        """Summary tables (or histograms) dropped whole because the output stalled."""
        if count <= 0:
            return
        self.summaries += count
        self._say("summaries (output stalled)",
                  self._limit.add("summaries (output stalled)", count))

    def tick(self) -> None:
        for what, count in self._limit.due():
            self._say(what, count)

    def _say(self, what: str, count: Optional[int]) -> None:
        if count:
            self.err.write(f"Lost {count} {what}\n")
            self.err.flush()

    def close(self) -> None:
        for what, count in self._limit.pending():
            self._say(what, count)
        if self.total:
            self.err.write(f"Lost {self.total} events in total\n")
            self.err.flush()
