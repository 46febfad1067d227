"""The line sink: one text or JSON line per accept (and per drop), queued once per batch.

Lines go to an ``Output``: in the CLI the OutputWriter (a writer thread behind a bounded
queue, so a stalled reader never blocks the loop or the signals); in tests and benchmarks
any TextIO through ``TextOutput``.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence, TextIO

from ..model import Accept, Drop, Item, Lost
from ..sink import LostNotices

# How long close() waits for queued lines to reach a reader, and for a reader that takes
# nothing at all (a stalled pipe: waiting longer only delays the exit after SIGTERM).
CLOSE_TIMEOUT_S = 0.5  # SIGINT/SIGTERM end the run within 1 s, whatever the reader
CLOSE_IDLE_S = 0.1


class Output(Protocol):
    def write_lines(self, text: str, lines: int) -> None: ...
    def dropped_lines(self) -> int: ...
    def dropped_reports(self) -> int: ...
    def flush(self, timeout_s: float, idle_s: Optional[float] = None) -> bool: ...
    def close(self, timeout_s: float = 0.0) -> None: ...


class TextOutput:
    """An Output over a plain TextIO (blocking writes; nothing is ever dropped)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write_lines(self, text: str, lines: int) -> None:
        self.out.write(text)
        self.out.flush()  # a person watching, or `| grep`, sees each batch at once

    def dropped_lines(self) -> int:
        return 0

    def dropped_reports(self) -> int:
        return 0

    def flush(self, timeout_s: float, idle_s: Optional[float] = None) -> bool:
        self.out.flush()
        return True

    def close(self, timeout_s: float = 0.0) -> None:
        self.out.flush()


class LineSink:
    """Writes ``accept_line(item)`` for each Accept and ``drop_line(item)`` for each Drop;
    Lost items, and lines the output had to drop, go to the stderr notices.
    ``accept_line=None`` is --quiet: no accept lines."""

    def __init__(self, output: Output, notices: LostNotices,
                 accept_line: Optional[Callable[[Accept], str]],
                 drop_line: Optional[Callable[[Drop], str]] = None,
                 header: Optional[str] = None) -> None:
        self._output = output
        self._write_lines = output.write_lines  # bound once: the per-batch hot path
        self._notices = notices
        self._accept_line = accept_line
        self._drop_line = drop_line
        if header is not None and accept_line is not None:
            output.write_lines(header + "\n", 0)

    def handle(self, items: Sequence[Item]) -> None:
        if not items:
            return
        kind = type(items[0])
        if kind is Accept:
            line = self._accept_line
            if line is not None:
                if len(items) == 1:  # a quiet host: one accept per wakeup
                    self._write_lines(line(items[0]) + "\n", 1)
                else:  # map() in C and one join: no copy of each line for its newline
                    self._write_lines("\n".join(map(line, items)) + "\n", len(items))
        elif kind is Drop:
            if self._drop_line is not None:
                drop_line = self._drop_line
                self._output.write_lines("".join([drop_line(item) + "\n" for item in items]),
                                         len(items))
        elif kind is Lost:
            for lost in items:
                self._notices.report(lost)

    def tick(self, now: float) -> None:
        self._report_stalled()
        self._notices.tick()  # what the once-a-second limit held back

    def _report_stalled(self) -> None:
        dropped = self._output.dropped_lines()
        if dropped:
            self._notices.report(Lost(dropped, "output stalled"))

    def close(self) -> None:
        try:
            self._output.flush(CLOSE_TIMEOUT_S, idle_s=CLOSE_IDLE_S)
        finally:
            self._output.close()
            self._report_stalled()
            self._notices.close()
