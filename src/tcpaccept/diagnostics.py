"""Diagnostics that never block: stderr through a writer thread, notices rate-limited.

A stderr that is a full pipe nobody reads would otherwise hold the main thread in
write(2), and a Python signal handler only runs between bytecodes on the main thread:
SIGTERM would wait for a reader. So while tracing, ``sys.stderr`` is a ``StderrLines``:
complete lines go to an OutputWriter on fd 2 (a bounded queue, plain blocking writes on
its own thread; see output/writer.py for why not O_NONBLOCK). When the queue is full, a
line is dropped and counted; at the end, the count is said (if stderr takes it).

``RateLimit`` keeps repeated notices (output stalled, ring buffer full) to one line per
second per kind: what happens between two lines is added up into the next one.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from typing import Callable, Iterator, Optional

from .output.writer import OutputError, OutputWriter

# Diagnostics are short lines: 64 KiB is hundreds of them, and bounds the memory.
STDERR_LIMIT_BYTES = 64 << 10
# At exit, how long queued diagnostics may wait for a reader that takes nothing.
STDERR_CLOSE_TIMEOUT_S = 0.2
STDERR_CLOSE_IDLE_S = 0.05
NOTICE_INTERVAL_S = 1.0


class StderrLines(io.TextIOBase):
    """A TextIO for ``sys.stderr`` whose writes never block: whole lines are queued for
    a writer thread; a line that does not fit is dropped and counted (``lost_lines``)."""

    def __init__(self, writer: OutputWriter, encoding: str = "utf-8") -> None:
        super().__init__()
        self._writer = writer
        self._partial = ""
        self._encoding = encoding
        self.lost_lines = 0

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._partial += text
        end = self._partial.rfind("\n") + 1
        if end:
            lines, self._partial = self._partial[:end], self._partial[end:]
            self._queue(lines)
        return len(text)

    def flush(self) -> None:
        pass  # whole lines leave at write(); a partial line waits for its newline

    def _queue(self, lines: str) -> None:
        count = lines.count("\n")
        try:
            self._writer.write_lines(lines, count)
        except (OSError, OutputError):  # stderr is gone: nobody to tell
            self.lost_lines += count
            return
        self.lost_lines += self._writer.dropped_lines()

    def finish(self) -> None:
        """Queue a partial last line, wait a moment for a reader, count what is left."""
        if self._partial:
            self._queue(self._partial + "\n")
            self._partial = ""
        with contextlib.suppress(OSError, OutputError):
            self._writer.flush(STDERR_CLOSE_TIMEOUT_S, idle_s=STDERR_CLOSE_IDLE_S)
        self._writer.close()
        self.lost_lines += self._writer.dropped_lines()


@contextlib.contextmanager
def nonblocking_stderr() -> Iterator[Optional[StderrLines]]:
    """While inside, ``sys.stderr`` never blocks the caller. On the way out, the lines
    that could not be written are counted in one last line (itself best effort)."""
    original = sys.stderr
    try:
        original.flush()
        writer = OutputWriter(original.fileno(), limit_bytes=STDERR_LIMIT_BYTES,
                              encoding=getattr(original, "encoding", None))
    except (OSError, OutputError, ValueError, AttributeError):  # no fd 2: leave it be
        yield None
        return
    lines = StderrLines(writer, getattr(original, "encoding", None) or "utf-8")
    sys.stderr = lines
    try:
        yield lines
    finally:
        if lines.lost_lines:
            lines.write(f"tcpaccept: {lines.lost_lines} diagnostic lines not written "
                        "(stderr stalled)\n")
        lines.finish()
        sys.stderr = original


class RateLimit:
    """One line per ``interval_s`` per key at most: the first at once, then what came
    since in one line when the interval is over (``due``) or at the end (``pending``)."""

    def __init__(self, interval_s: float = NOTICE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._pending: dict[str, int] = {}

    def add(self, key: str, count: int) -> Optional[int]:
        """Count ``count`` under key; returns the number to say now, or None to wait."""
        self._pending[key] = self._pending.get(key, 0) + count
        return self._take(key, self._clock())

    def due(self) -> list[tuple[str, int]]:
        """Keys whose interval is over and that have something to say."""
        now = self._clock()
        out = []
        for key in list(self._pending):
            count = self._take(key, now)
            if count is not None:
                out.append((key, count))
        return out

    def pending(self) -> list[tuple[str, int]]:
        """Everything not yet said (at the end)."""
        out = [(key, count) for key, count in self._pending.items() if count]
        self._pending.clear()
        return out

    def _take(self, key: str, now: float) -> Optional[int]:
        count = self._pending.get(key, 0)
        if not count or now - self._last.get(key, -self._interval) < self._interval:
            return None
        self._last[key] = now
        self._pending[key] = 0
        return count
