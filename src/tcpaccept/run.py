"""The event loop: poll the tracer, hand batches to a sink, report losses, stop cleanly."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Callable, Optional, Protocol, TextIO

from .drops import DropReport
from .event import Decoder, Event
from .tracer import Tracer

BANNER = "Tracing TCP accepts. Hit Ctrl-C to end."
# How long a lone event may wait: the kernel wakes us only for batches (tcpaccept.bpf.c).
POLL_MS = 50
DROPS_POLL_S = 1.0


class Sink(Protocol):
    """Where decoded events go: line output, summary tables, ..."""

    def start(self) -> None: ...
    def handle(self, records: list[bytes]) -> None: ...
    def handle_events(self, events: list[Event]) -> None: ...
    def handle_drops(self, reports: list[DropReport]) -> None: ...
    def tick(self, now: float) -> None: ...
    def finish(self) -> None: ...


class DropSource(Protocol):
    def poll(self) -> list[DropReport]: ...
    def flush(self) -> list[DropReport]: ...


class LineSink:
    """One formatted line per event, written and flushed once per batch."""

    def __init__(self, decoder: Decoder, line: Callable, out: TextIO,
                 header: Optional[str] = None, drop_line: Optional[Callable] = None) -> None:
        self._decode = decoder.decode
        self._line = line
        self._drop_line = drop_line
        self._out = out
        self._header = header

    def start(self) -> None:
        if self._header is not None:
            self._out.write(self._header + "\n")
            self._out.flush()

    def handle(self, records: list[bytes]) -> None:
        decode, line = self._decode, self._line
        self._write([line(decode(r)) + "\n" for r in records])

    def handle_events(self, events: list[Event]) -> None:
        line = self._line
        self._write([line(e) + "\n" for e in events])

    def _write(self, lines: list[str]) -> None:
        self._out.write("".join(lines))
        # A person watching, or `| grep`, sees each batch at once.
        self._out.flush()

    def handle_drops(self, reports: list[DropReport]) -> None:
        if reports and self._drop_line is not None:
            now = time.time_ns()
            self._out.write("".join(self._drop_line(r, now) + "\n" for r in reports))
            self._out.flush()

    def tick(self, now: float) -> None:
        pass

    def finish(self) -> None:
        pass


class StopFlag:
    """Set by SIGINT/SIGTERM; the poll returns early (EINTR) and the loop ends."""

    def __init__(self) -> None:
        self.set = False

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.set = True


def run(
    tracer: Tracer,
    sink: Sink,
    err: TextIO,
    stop: StopFlag,
    count: Optional[int] = None,
    duration: Optional[float] = None,
    drops: Optional[DropSource] = None,
) -> int:
    """Trace until a signal, the duration or the count; returns the number of events."""
    deadline = time.monotonic() + duration if duration else None
    seen = 0
    reported_lost = 0
    next_lost_check = 0.0
    next_drops_poll = time.monotonic() + DROPS_POLL_S
    while not stop.set:
        timeout = POLL_MS
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            timeout = max(1, min(timeout, int(remaining * 1000)))
        records = tracer.poll(timeout)
        if records:
            if count is not None and seen + len(records) >= count:
                sink.handle(records[: count - seen])
                seen = count
                break
            sink.handle(records)
            seen += len(records)
        now = time.monotonic()
        if now >= next_lost_check:
            reported_lost = _report_lost(tracer, err, reported_lost)
            next_lost_check = now + 1.0
        if drops is not None and now >= next_drops_poll:
            sink.handle_drops(drops.poll())
            next_drops_poll = now + DROPS_POLL_S
        sink.tick(now)
    # Drain what is already queued so that a stop never drops accepted events silently.
    if count is None or seen < count:
        for records in iter(lambda: tracer.poll(0), []):
            take = records if count is None else records[: count - seen]
            sink.handle(take)
            seen += len(take)
            if count is not None and seen >= count:
                break
    if drops is not None:
        sink.handle_drops(drops.flush())  # drops not yet reported are reported once more
    lost = tracer.lost_events()
    if lost > reported_lost:
        err.write(f"Lost {lost - reported_lost} events\n")
    if lost:
        err.write(f"Lost {lost} events in total\n")
    sink.finish()
    return seen


def _report_lost(tracer: Tracer, err: TextIO, reported: int) -> int:
    lost = tracer.lost_events()
    if lost > reported:
        err.write(f"Lost {lost - reported} events\n")
        err.flush()
    return lost


def silence_stdout() -> None:
    """After EPIPE (`| head -1`): point stdout at /dev/null so the exit flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
