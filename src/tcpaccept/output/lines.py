"""The line sink: one text or JSON line per accept (and per drop), flushed once per batch."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, TextIO

from ..model import Accept, Drop, Item, Lost
from ..sink import LostNotices


class LineSink:
    """Writes ``accept_line(item)`` for each Accept and ``drop_line(item)`` for each Drop;
    Lost items go to the stderr notices. ``accept_line=None`` is --quiet: no accept lines."""

    def __init__(self, out: TextIO, notices: LostNotices,
                 accept_line: Optional[Callable[[Accept], str]],
                 drop_line: Optional[Callable[[Drop], str]] = None,
                 header: Optional[str] = None) -> None:
        self._out = out
        self._notices = notices
        self._accept_line = accept_line
        self._drop_line = drop_line
        if header is not None and accept_line is not None:
            out.write(header + "\n")
            out.flush()

    def handle(self, items: Sequence[Item]) -> None:
        if not items:
            return
        kind = type(items[0])
        if kind is Accept:
            line = self._accept_line
            if line is not None:
                self._write([line(item) + "\n" for item in items])
        elif kind is Drop:
            if self._drop_line is not None:
                drop_line = self._drop_line
                self._write([drop_line(item) + "\n" for item in items])
        elif kind is Lost:
            for lost in items:
                self._notices.report(lost)

    def _write(self, lines: list[str]) -> None:
        self._out.write("".join(lines))
        # A person watching, or `| grep`, sees each batch at once.
        self._out.flush()

    def tick(self, now: float) -> None:
        pass

    def close(self) -> None:
        self._out.flush()
        self._notices.close()
