"""The output writer (issue 14 items 1-2): a stalled reader never blocks the caller, lines
beyond the bound are dropped whole and counted, errors are one exception, encoding never
fails. Real pipes and real devices, no mocks."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios
import threading
import time

import pytest

from tcpaccept.output.writer import OutputError, OutputWriter

LINE = "12:00:00 4242   nginx          10.0.0.1   5555  10.0.0.2   80    0/128\n"


def read_all(fd: int, timeout: float = 5.0) -> bytes:
    """Everything the pipe delivers until the writer side is closed (EOF)."""
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = os.read(fd, 1 << 16)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def test_lines_reach_a_reading_pipe_in_order() -> None:
    r, w = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_all(r)))
    reader.start()
    writer = OutputWriter(w)
    for batch in range(200):
        text = "".join(f"line {batch} {i}\n" for i in range(50))
        writer.write_lines(text, 50)
    assert writer.flush(5.0)
    writer.close()
    os.close(w)
    reader.join(10)
    os.close(r)
    expected = "".join(f"line {b} {i}\n" for b in range(200) for i in range(50)).encode()
    assert got[0] == expected
    assert writer.dropped_lines() == 0


def test_a_stalled_reader_never_blocks_and_lost_lines_are_counted_whole() -> None:
    r, w = os.pipe()  # nobody reads until the end: the pipe fills, then the queue
    writer = OutputWriter(w, limit_bytes=64 * 1024)
    total = 20_000
    slowest = 0.0
    for _ in range(total // 100):
        start = time.monotonic()
        writer.write_lines(LINE * 100, 100)
        slowest = max(slowest, time.monotonic() - start)
    assert slowest < 0.05, f"write_lines blocked for {slowest:.3f} s"
    assert writer.pending_bytes() <= 64 * 1024
    dropped = writer.dropped_lines()
    assert dropped > 0
    assert writer.dropped_lines() == 0, "the count is since the previous call"
    # The reader wakes up: whatever was kept arrives as whole lines, nothing invented.
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_all(r)))
    reader.start()
    assert writer.flush(5.0)
    writer.close()
    os.close(w)
    reader.join(10)
    os.close(r)
    data = got[0]
    assert data.endswith(b"\n")
    assert set(data.splitlines(keepends=True)) == {LINE.encode()}
    assert data.count(b"\n") + dropped == total


def test_a_pipe_never_holds_half_a_line_while_the_reader_stalls() -> None:
    r, w = os.pipe()
    writer = OutputWriter(w, limit_bytes=1 << 20)
    odd = "x" * 97 + "\n"  # 98 bytes: does not divide the 64 KiB pipe
    for _ in range(2000):
        writer.write_lines(odd * 10, 10)
    time.sleep(0.3)  # the writer thread fills the pipe and blocks there
    os.set_blocking(r, False)
    data = b""
    while True:
        try:
            piece = os.read(r, 1 << 16)
        except BlockingIOError:
            break
        data += piece
        if len(data) >= 60 * 1024:
            break
    assert data and data.endswith(b"\n"), len(data)
    writer.close()
    os.close(r)
    os.close(w)


def bytes_in_pipe(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def test_close_counts_exactly_what_a_stalled_reader_never_got() -> None:
    r, w = os.pipe()
    writer = OutputWriter(w, limit_bytes=1 << 20)
    for _ in range(100):
        writer.write_lines(LINE * 100, 100)
    start = time.monotonic()
    assert not writer.flush(0.2)
    writer.close(timeout_s=0.2)
    assert time.monotonic() - start < 1.0
    in_pipe = bytes_in_pipe(r)  # read nothing: reading would let the stuck write go on
    assert in_pipe % len(LINE) == 0, "whole lines only"
    assert writer.dropped_lines() + in_pipe // len(LINE) == 10_000
    writer.write_lines(LINE, 1)  # after close: dropped, counted, no error
    assert writer.dropped_lines() == 1
    os.close(r)
    os.close(w)


def test_a_full_device_is_one_error_naming_the_events_not_written() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        writer = OutputWriter(fd)
        writer.write_lines(LINE * 10, 10)
        with pytest.raises(OutputError) as caught:
            writer.flush(5.0)
        assert str(caught.value) == \
            "cannot write output: No space left on device (10 events not written)"
        assert caught.value.exit_code == 1
        with pytest.raises(OutputError) as again:
            writer.write_lines(LINE * 5, 5)
        assert "(15 events not written)" in str(again.value)
        writer.close()
    finally:
        os.close(fd)


def test_a_reader_that_went_away_is_a_broken_pipe() -> None:
    r, w = os.pipe()
    os.close(r)
    writer = OutputWriter(w)
    writer.write_lines(LINE, 1)
    with pytest.raises(BrokenPipeError) as caught:
        writer.flush(5.0)
    assert caught.value.errno == errno.EPIPE
    writer.close()
    os.close(w)


@pytest.mark.parametrize("encoding,text,expected", [
    ("latin-1", "nginx\u2192 ok\n", b"nginx\\u2192 ok\n"),
    ("ascii", "caf\u00e9\n", b"caf\\xe9\n"),
    ("utf-8", "nginx\u2192\n", "nginx\u2192\n".encode()),
    ("utf-8", "bad\udcff\n", b"bad\\udcff\n"),  # a lone surrogate cannot fail the write
])
def test_encoding_never_fails(encoding: str, text: str, expected: bytes) -> None:
    r, w = os.pipe()
    writer = OutputWriter(w, encoding=encoding)
    writer.write_lines(text, 1)
    assert writer.flush(5.0)
    writer.close()
    os.close(w)
    assert read_all(r) == expected
    os.close(r)


def test_a_batch_bigger_than_the_room_left_keeps_the_lines_that_fit() -> None:
    r, w = os.pipe()
    limit = 30 * len(LINE) + 5
    writer = OutputWriter(w, limit_bytes=limit)
    os.write(w, b"y" * 65535 + b"\n")  # the pipe is full
    writer.write_lines(LINE, 1)  # the thread blocks on this one: 1 line of the bound used
    time.sleep(0.2)
    assert writer.pending_bytes() == len(LINE)
    writer.write_lines(LINE * 1000, 1000)
    assert writer.pending_bytes() == 30 * len(LINE)
    # The bound holds the stuck LINE + 29 of the batch, 5 bytes spare.
    assert writer.dropped_lines() == 1000 - 29
    writer.close()
    os.close(r)
    os.close(w)


def test_flush_gives_up_early_on_a_stalled_reader_but_waits_for_a_slow_one() -> None:
    r, w = os.pipe()
    writer = OutputWriter(w)
    writer.write_lines(LINE * 2000, 2000)  # ~140 KB: more than the pipe holds
    start = time.monotonic()
    assert not writer.flush(5.0, idle_s=0.1)  # nobody reads: no progress, give up
    assert time.monotonic() - start < 0.5
    stop = threading.Event()

    def slow_reader() -> None:  # 8 KiB every 20 ms: ~400 KB/s, never idle for 0.1 s
        while not stop.is_set():
            os.read(r, 8192)
            time.sleep(0.02)

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    assert writer.flush(5.0, idle_s=0.1)
    stop.set()
    writer.close()
    os.close(w)
    reader.join(5)
    os.close(r)


def test_buffered_text_keeps_or_drops_a_whole_table() -> None:
    from tcpaccept.output.writer import BufferedText

    r, w = os.pipe()
    writer = OutputWriter(w, limit_bytes=300)
    os.write(w, b"z" * 65535 + b"\n")  # the pipe is full: everything stays queued
    out = BufferedText(writer)
    for _ in range(3):  # 3 tables of 2 lines, 100 bytes each
        out.write("LISTENER  ACCEPTS\n")
        out.write("x" * 81 + "\n")
        out.flush()
    time.sleep(0.1)
    assert writer.pending_bytes() == 300
    out.write("y" * 99 + "\n")
    out.flush()  # does not fit: dropped whole, not cut
    assert writer.pending_bytes() == 300
    assert writer.dropped_lines() == 0  # tables are not events
    os.read(r, 65536)
    assert writer.flush(5.0)
    writer.close()
    os.close(w)
    assert read_all(r) == (b"LISTENER  ACCEPTS\n" + b"x" * 81 + b"\n") * 3
    os.close(r)


def test_a_closed_stdout_is_one_error_at_once() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)  # w is now a closed descriptor, like `tcpaccept >&-`
    with pytest.raises(OutputError) as caught:
        OutputWriter(w)
    assert str(caught.value) == "cannot write output: Bad file descriptor (0 events not written)"


def test_flush_after_close_does_not_wait_again() -> None:
    r, w = os.pipe()
    writer = OutputWriter(w)
    writer.write_lines(LINE * 2000, 2000)  # more than the pipe holds; nobody reads
    writer.close(timeout_s=0.1)
    start = time.monotonic()
    assert not writer.flush(5.0, idle_s=1.0)
    assert time.monotonic() - start < 0.1
    os.close(r)
    os.close(w)


# Issue 20: a reader that went away is noticed without a write; a line longer than PIPE_BUF
# never lands half in a stalled pipe; a summary dropped whole is counted and said.

def test_a_reader_that_went_away_is_noticed_without_a_write() -> None:
    r, w = os.pipe()
    gone = threading.Event()
    writer = OutputWriter(w, on_closed=gone.set)
    writer.write_lines(LINE, 1)
    assert writer.flush(5.0)
    assert os.read(r, 4096) == LINE.encode()
    os.close(r)  # `| head -1` exits; nothing more is written (a quiet port)
    start = time.monotonic()
    assert gone.wait(2.0), "the closed pipe was not noticed"
    assert time.monotonic() - start < 1.0
    with pytest.raises(BrokenPipeError):
        writer.write_lines(LINE, 1)
    writer.close()
    os.close(w)


def test_a_regular_file_is_never_taken_for_a_reader_gone(tmp_path) -> None:
    gone = threading.Event()
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    writer = OutputWriter(fd, on_closed=gone.set)
    assert not gone.wait(0.6)
    writer.write_lines(LINE, 1)
    assert writer.flush(5.0)
    writer.close()
    os.close(fd)


def test_a_line_longer_than_pipe_buf_never_lands_half_in_a_stalled_pipe() -> None:
    r, w = os.pipe()
    short = b"s" * 99 + b"\n"
    os.write(w, short * 600)  # 60,000 of 65,536 bytes: some room, not enough for the line
    before = bytes_in_pipe(r)
    long_line = "L" * 9_999 + "\n"  # one JSON summary line can be this long
    writer = OutputWriter(w)
    writer.write_lines(long_line, 1)
    time.sleep(0.3)
    assert bytes_in_pipe(r) == before, "part of the long line went into the pipe"
    writer.close(timeout_s=0.1)
    assert writer.dropped_lines() == 1
    assert os.read(r, 1 << 17) == short * 600  # whole lines only
    os.close(r)
    os.close(w)


def test_a_long_line_goes_out_whole_once_the_reader_makes_room() -> None:
    r, w = os.pipe()
    os.write(w, b"s" * 99 + b"\n" * 1)
    writer = OutputWriter(w)
    long_line = "L" * 20_000 + "\n"
    writer.write_lines(long_line, 1)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_all(r)))
    reader.start()
    assert writer.flush(5.0)
    writer.close()
    os.close(w)
    reader.join(10)
    os.close(r)
    assert got[0] == b"s" * 99 + b"\n" + long_line.encode()


def test_buffered_text_says_each_table_it_drops() -> None:
    import io

    from tcpaccept.output.writer import BufferedText
    from tcpaccept.sink import LostNotices

    r, w = os.pipe()
    writer = OutputWriter(w, limit_bytes=300)
    os.write(w, b"z" * 65535 + b"\n")  # the pipe is full: everything stays queued
    err = io.StringIO()
    notices = LostNotices(err)
    out = BufferedText(writer, notices)
    for _ in range(4):  # 4 tables of 100 bytes: the 4th does not fit
        out.write("x" * 99 + "\n")
        out.flush()
    assert err.getvalue() == "Lost 1 summaries (output stalled)\n"
    writer.close()  # the 3 queued tables never got out either
    assert writer.dropped_reports() == 3
    os.close(r)
    os.close(w)
