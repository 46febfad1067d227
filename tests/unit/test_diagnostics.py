"""Issue 20: diagnostics never block and repeated notices are rate-limited with totals.
Real pipes; a fake clock only for the one-line-a-second arithmetic."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import time

from tcpaccept.diagnostics import RateLimit, StderrLines
from tcpaccept.model import Lost
from tcpaccept.output.writer import OutputWriter
from tcpaccept.sink import LostNotices


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_says_the_first_at_once_then_the_sum_once_a_second() -> None:
    clock = FakeClock()
    limit = RateLimit(1.0, clock)
    assert limit.add("stalled", 5) == 5
    for _ in range(20):  # a loop turn every 50 ms
        clock.now += 0.04
        assert limit.add("stalled", 10) is None
    assert limit.due() == []
    clock.now += 0.3
    assert limit.due() == [("stalled", 200)]
    assert limit.add("ring", 1) == 1  # another kind has its own second
    assert limit.add("stalled", 7) is None
    assert limit.pending() == [("stalled", 7)]


def test_lost_notices_lines_add_up_to_the_total() -> None:
    err = io.StringIO()
    notices = LostNotices(err)
    for _ in range(50):  # 50 loop turns of a stall, well within a second
        notices.report(Lost(3, "output stalled"))
        notices.tick()
    notices.close()
    lines = err.getvalue().splitlines()
    assert lines[0] == "Lost 3 events (output stalled)"
    assert len(lines) <= 3, lines
    assert lines[-1] == "Lost 150 events in total"
    assert sum(int(line.split()[1]) for line in lines[:-1]) == 150


def fill(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(fd, b"z" * 4095 + b"\n")
    fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def test_stderr_lines_never_block_on_a_full_pipe_and_count_the_loss() -> None:
    r, w = os.pipe()
    fill(w)  # a stderr nobody reads
    lines = StderrLines(OutputWriter(w, limit_bytes=4096))
    start = time.monotonic()
    for i in range(1000):
        print(f"tcpaccept: warning: notice {i}", file=lines, flush=True)
    lines.finish()
    took = time.monotonic() - start
    assert took < 1.0, f"{took:.2f} s: a diagnostic write blocked"
    assert 900 < lines.lost_lines <= 1000  # 4 KiB of queue held the rest
    os.close(r)
    os.close(w)


def test_stderr_lines_pass_whole_lines_through_a_reading_pipe() -> None:
    r, w = os.pipe()
    lines = StderrLines(OutputWriter(w))
    lines.write("tcpaccept: a ")
    lines.write("line\nand half")
    lines.finish()  # the half line is completed, not lost
    os.close(w)
    assert os.read(r, 4096) == b"tcpaccept: a line\nand half\n"
    assert lines.lost_lines == 0
    os.close(r)
