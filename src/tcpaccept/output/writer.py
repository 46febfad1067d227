"""Output that never blocks the event loop: a writer thread behind a bounded buffer.

Why a thread and not O_NONBLOCK on stdout: the O_NONBLOCK flag lives on the open file
description, which stdout usually shares with stderr (a terminal, `2>&1`, a journald
socket) and with the shell that started us; setting it would make their writes fail with
EAGAIN. The thread does plain blocking writes, the loop only appends to a bounded queue.

What the caller gets:
- ``write_lines`` never blocks: when the reader stalls, the queue fills to ``limit_bytes``
  and later lines are dropped whole and counted (``dropped_lines``: "output stalled").
- Whole lines only: a pipe gets writes of at most PIPE_BUF bytes cut at line ends, which the
  kernel makes atomic, so a reader never sees half a line even when we exit mid-stall; a
  regular file that fills up (ENOSPC) is truncated back to its last complete line.
- Errors surface on the caller's thread at the next call: EPIPE as BrokenPipeError (the CLI
  treats `| head` as a normal end), anything else (ENOSPC, EIO, ...) as OutputError,
  ``cannot write output: <strerror> (N events not written)``.
- A reader that went away is noticed without a write: while idle, the thread looks at a
  pipe or socket every WATCH_S for POLLERR/POLLHUP (`tcpaccept -j | head -1` on a quiet
  port) and calls ``on_closed``, so the caller can stop at once instead of at the next
  event.
- Reports that are not events (summary tables, ``lines=0``) are kept or dropped whole too,
  and the dropped ones are counted (``dropped_reports``), so a lost summary is said.
- A line longer than PIPE_BUF (a big JSON summary) is written to a pipe only when the pipe
  has room for all of it, so that even an exit mid-stall leaves no half line.
- Encoding never fails: UTF-8 unless stdout's encoding says otherwise (PYTHONIOENCODING,
  the locale); characters the encoding cannot hold are written as backslash escapes
  (``nginx→`` on latin-1 is ``nginx\\u2192``), lone surrogates as ``\\udcff``.
"""

from __future__ import annotations

import codecs
import collections
import errno
import fcntl
import os
import select
import stat
import struct
import sys
import termios
import threading
import time
from typing import Callable, Optional, Protocol

from ..errors import TcpacceptError

# The default bound: as big as the default kernel ring, ~28k text lines of headroom.
DEFAULT_LIMIT_BYTES = 4 << 20
# Exit code for an output that cannot be written (README: "exit codes").
OUTPUT_ERROR_EXIT = 1
# Linux makes pipe writes of at most this many bytes atomic (pipe(7)).
PIPE_BUF = select.PIPE_BUF
# How often an idle writer looks whether the reader of its pipe or socket went away.
WATCH_S = 0.25
# How often a line longer than PIPE_BUF looks for room in the pipe.
_ROOM_CHECK_S = 0.01


class _SummaryNotices(Protocol):
    def report_summaries(self, count: int) -> None: ...


class OutputError(TcpacceptError):
    """The output cannot be written (ENOSPC, EIO, ...); str() is the one line to print."""

    def __init__(self, strerror: str, not_written: int) -> None:
        super().__init__(f"cannot write output: {strerror} ({not_written} events not written)",
                         OUTPUT_ERROR_EXIT)
        self.strerror = strerror
        self.not_written = not_written


def output_encoding() -> str:
    """The encoding stdout asks for (PYTHONIOENCODING, locale), UTF-8 when unknown."""
    name = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


class _Chunk:
    __slots__ = ("data", "events")

    def __init__(self, data: bytes, events: int) -> None:
        self.data = data
        self.events = events


class OutputWriter:
    """Writes whole lines to ``fd`` from a daemon thread; never blocks the caller."""

    def __init__(self, fd: int, limit_bytes: int = DEFAULT_LIMIT_BYTES,
                 encoding: Optional[str] = None,
                 on_closed: Optional[Callable[[], None]] = None) -> None:
        if limit_bytes < 1:
            raise ValueError("limit_bytes must be positive")
        self._fd = fd
        self._limit = limit_bytes
        self._encoding = encoding or output_encoding()
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:  # `tcpaccept >&-`: no stdout at all
            raise OutputError(exc.strerror or str(exc), 0) from None
        self._is_pipe = stat.S_ISFIFO(mode)
        self._is_file = stat.S_ISREG(mode)
        self._watchable = self._is_pipe or stat.S_ISSOCK(mode)
        self._on_closed = on_closed
        self._cond = threading.Condition()
        self._queue: collections.deque[_Chunk] = collections.deque()
        self._queued_bytes = 0  # queued plus the chunk being written: the memory bound
        self._busy: Optional[_Chunk] = None  # the chunk being written
        self._busy_done = 0  # how many of its bytes are out
        self._bytes_out = 0  # written in all, for flush to see progress
        self._dropped = 0  # events dropped since the last dropped_lines()
        self._dropped_reports = 0  # lines=0 texts dropped since the last dropped_reports()
        self._error: Optional[OSError] = None
        self._not_written = 0  # events lost to the error
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tcpaccept-output", daemon=True)
        self._thread.start()

    # -- the caller's side --

    def write_lines(self, text: str, lines: int) -> None:
        """Queue ``text`` (whole lines, each ending in a newline) carrying ``lines`` events.

        When the bound is reached, the text is cut after the last line that fits (if
        ``lines`` is its number of newlines; otherwise it is kept or dropped whole) and the
        events left out are counted in ``dropped_lines``."""
        data = text.encode(self._encoding, "backslashreplace")
        with self._cond:
            self._raise_if_failed(lines)
            if self._closed:
                self._dropped += lines
                self._dropped_reports += not lines
                return
            room = self._limit - self._queued_bytes
            if len(data) > room:
                kept = 0
                cut = data.rfind(b"\n", 0, room) if room > 0 else -1
                if cut >= 0 and data.count(b"\n") == lines:
                    data = data[:cut + 1]
                    kept = data.count(b"\n")
                self._dropped += lines - kept
                if not lines:
                    self._dropped_reports += 1
                if not kept:
                    return
                lines = kept
            if not data:
                return
            self._queue.append(_Chunk(data, lines))
            self._queued_bytes += len(data)
            self._cond.notify_all()

    def dropped_lines(self) -> int:
        """Events dropped because the output stalled, since the previous call."""
        with self._cond:
            dropped, self._dropped = self._dropped, 0
            return dropped

    def dropped_reports(self) -> int:
        """Reports (texts written with ``lines=0``: summary tables) dropped whole, or not
        wholly written at close, since the previous call."""
        with self._cond:
            dropped, self._dropped_reports = self._dropped_reports, 0
            return dropped

    def pending_bytes(self) -> int:
        with self._cond:
            return self._queued_bytes

    def flush(self, timeout_s: float, idle_s: Optional[float] = None) -> bool:
        """Wait up to timeout_s for everything queued to be written; True when it was.
        With idle_s, give up as soon as no byte got out for that long (a stalled reader:
        waiting longer only delays the exit). Raises BrokenPipeError or OutputError if the
        output failed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if self._closed:  # what was left was counted as dropped: nothing to wait for
                self._raise_if_failed(0)
                return self._busy is None
            last_progress, last_time = self._bytes_out, time.monotonic()
            while True:
                if self._error is not None or (not self._queue and self._busy is None):
                    break
                now = time.monotonic()
                if self._bytes_out != last_progress:
                    last_progress, last_time = self._bytes_out, now
                wait = deadline - now
                if idle_s is not None:
                    # Progress is looked at once per idle_s, not polled: every wake-up of
                    # an exit path can wait long for a CPU on a loaded machine (0.9 s seen).
                    wait = min(wait, last_time + idle_s - now)
                if wait <= 0:
                    break
                self._cond.wait(wait)
            self._raise_if_failed(0)
            return not self._queue and self._busy is None

    def close(self, timeout_s: float = 0.0) -> None:
        """Stop taking lines; wait up to timeout_s for the queue to drain. Events still
        queued after that are counted in ``dropped_lines`` (the output stalled). Never
        raises: a failure was reported by an earlier call (or the caller does not care).
        The fd is not closed (it is usually stdout)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._error is not None or (not self._queue and self._busy is None),
                timeout_s)
            self._closed = True
            if self._error is None:
                # The lines of a chunk stuck in write() count as lost: a reader that
                # never resumes will not see them.
                self._dropped += sum(chunk.events for chunk in self._queue)
                self._dropped_reports += sum(not chunk.events for chunk in self._queue)
                if self._busy is not None:
                    self._dropped += _unwritten(self._busy, self._busy_done)
                    self._dropped_reports += not self._busy.events
            self._queue.clear()
            self._cond.notify_all()

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise_if_failed(self, more_events: int) -> None:
        if self._error is None:
            return
        self._not_written += more_events
        if self._error.errno == errno.EPIPE:
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        raise OutputError(self._error.strerror or str(self._error), self._not_written)

    # -- the writer thread --

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    if not self._cond.wait(WATCH_S) and self._reader_gone():
                        self._error = BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
                        self._cond.notify_all()
                        break
                if not self._queue:
                    if self._error is not None:
                        self._tell_closed()
                    return
                chunk = self._queue.popleft()
                self._busy = chunk
                self._busy_done = 0
            written, error = self._write_chunk(chunk.data)
            with self._cond:
                self._busy = None
                if error is None:
                    self._queued_bytes -= written
                else:
                    self._error = error
                    self._not_written = _unwritten(chunk, written)
                    self._not_written += sum(c.events for c in self._queue)
                    self._queue.clear()
                    self._queued_bytes = 0
                self._cond.notify_all()
            if error is not None:
                if error.errno == errno.EPIPE:
                    self._tell_closed()
                return

    def _reader_gone(self) -> bool:
        """A pipe without readers says POLLERR, a socket whose peer left POLLHUP; a write
        would then fail with EPIPE. Regular files and terminals are never asked."""
        if not self._watchable:
            return False
        poller = select.poll()
        poller.register(self._fd, 0)  # POLLERR and POLLHUP are always reported
        return any(revents & (select.POLLERR | select.POLLHUP)
                   for _fd, revents in poller.poll(0))

    def _tell_closed(self) -> None:
        if self._on_closed is not None:
            self._on_closed()

    def _wait_for_room(self, size: int) -> bool:
        """A line longer than PIPE_BUF: wait until the pipe can take all of it, so that a
        stalled reader never gets half of it. False when closed (or the reader left)
        meanwhile: the caller writes nothing more."""
        try:
            capacity = fcntl.fcntl(self._fd, fcntl.F_GETPIPE_SZ)
            if capacity < size:  # grow the pipe if we may; if not, a blocking write it is
                capacity = fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, size)
        except OSError:
            return True
        while not self._closed:
            if self._reader_gone():
                return True  # the write gets EPIPE: the usual error path
            queued = struct.unpack("i", fcntl.ioctl(self._fd, termios.FIONREAD, b"\0" * 4))[0]
            if capacity - queued >= size:
                return True
            time.sleep(_ROOM_CHECK_S)
        return False

    def _write_chunk(self, data: bytes) -> tuple[int, Optional[OSError]]:
        """Write all of data: (bytes written, None), or (bytes that got out, the error)."""
        view = memoryview(data)
        done = 0
        while done < len(data):
            end = len(data)
            if self._is_pipe and end - done > PIPE_BUF:
                # At most PIPE_BUF, ending at a line end: the kernel writes it all or none.
                cut = data.rfind(b"\n", done, done + PIPE_BUF)
                end = cut + 1 if cut >= 0 else data.find(b"\n", done) + 1 or len(data)
                if end - done > PIPE_BUF and not self._wait_for_room(end - done):
                    return done, None  # closed while waiting: close() counted the rest
            try:
                written = os.write(self._fd, view[done:end])
                done += written
                self._busy_done = done
                self._bytes_out += written
            except InterruptedError:
                continue
            except OSError as exc:
                if self._is_file:
                    done = self._cut_partial_line(data, done)
                return done, exc
        return done, None

    def _cut_partial_line(self, data: bytes, done: int) -> int:
        """A full disk took part of a line: truncate the file back to the line's start."""
        line_start = data.rfind(b"\n", 0, done) + 1
        partial = done - line_start
        if partial:
            try:
                end = os.lseek(self._fd, 0, os.SEEK_CUR)
                os.ftruncate(self._fd, end - partial)
                os.lseek(self._fd, end - partial, os.SEEK_SET)
            except OSError:
                return done  # not seekable after all: the half line stays
        return line_start


def _unwritten(chunk: _Chunk, written: int) -> int:
    """Events of chunk not (wholly) written, when each line is one event; else all."""
    newlines = chunk.data.count(b"\n")
    if newlines != chunk.events:
        return chunk.events if written < len(chunk.data) else 0
    return newlines - chunk.data.count(b"\n", 0, written)


class BufferedText:
    """A TextIO front for code that writes a report in pieces and then flush()es (the
    summary tables): the pieces reach the writer together at flush, so a stalled reader
    loses whole tables, never half of one, and the caller never blocks. A table dropped
    is said like dropped events (``notices.report_summaries``)."""

    def __init__(self, writer: OutputWriter, notices: Optional[_SummaryNotices] = None) -> None:
        self._writer = writer
        self._notices = notices
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        if self._parts:
            text = "".join(self._parts)
            self._parts.clear()
            try:
                self._writer.write_lines(text, 0)  # not events: kept or dropped whole
            except BrokenPipeError:
                # The reader left (on_closed stops the loop): the session's last flush
                # raises it again; here it would cut the summary sink's close short,
                # before its notices are said.
                return
            if self._notices is not None:
                self._notices.report_summaries(self._writer.dropped_reports())
