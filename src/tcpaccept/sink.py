"""The sink interface: where decoded items go. Data flows one way, loop -> sinks.

A sink has three methods and no others: ``handle(items)`` for a batch of model objects
(``Accept``, ``Drop``, ``Lost``), ``tick(now)`` on every loop turn (interval output), and
``close()`` once at the end (final tables, flushes). A tee is just a sink that forwards.

Each batch holds items of one type (the loop hands over accepts, drops and lost notices
separately), so a sink dispatches once per batch, not once per item: the hot path stays a
list comprehension.
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence, TextIO

from .diagnostics import RateLimit
from .model import Item, Lost


class Sink(Protocol):
    def handle(self, items: Sequence[Item]) -> None: ...
    def tick(self, now: float) -> None: ...
    def close(self) -> None: ...


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

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.total = 0
        self.summaries = 0
        self._limit = RateLimit()

    def report(self, lost: Lost) -> None:
        if lost.count <= 0:
            return
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
