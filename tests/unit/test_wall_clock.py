"""The monotonic -> wall-clock offset (issue 14 item 7): re-read every few seconds so a
clock step is picked up, and right inside a time namespace."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tcpaccept.output.clock import WallClock, timens_monotonic_offset_ns

SRC = str(Path(__file__).resolve().parents[2] / "src")
S = 1_000_000_000


class FakeClocks:
    def __init__(self) -> None:
        self.wall = 1_700_000_000 * S
        self.mono = 1_000 * S

    def wall_ns(self) -> int:
        return self.wall

    def monotonic_ns(self) -> int:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += int(seconds * S)
        self.mono += int(seconds * S)


def test_a_wall_clock_step_is_picked_up_within_the_period() -> None:
    clocks = FakeClocks()
    clock = WallClock(2.0, clocks.wall_ns, clocks.monotonic_ns, timens_offset_ns=0)
    before = clock.offset_ns()
    assert before == clocks.wall - clocks.mono
    clocks.wall += 3600 * S  # an operator (or NTP) steps the clock an hour ahead
    clocks.advance(1.0)
    assert clock.offset_ns() == before, "not re-read before the period is over"
    clocks.advance(1.5)
    assert clock.offset_ns() == before + 3600 * S


def test_the_time_namespace_offset_is_added_back(tmp_path: Path) -> None:
    offsets = tmp_path / "timens_offsets"
    offsets.write_text("monotonic       86400         5\nboottime            0         0\n")
    assert timens_monotonic_offset_ns(str(offsets)) == 86400 * S + 5
    assert timens_monotonic_offset_ns(str(tmp_path / "missing")) == 0
    clocks = FakeClocks()
    clock = WallClock(2.0, clocks.wall_ns, clocks.monotonic_ns,
                      timens_offset_ns=86400 * S)
    assert clock.offset_ns() == clocks.wall - clocks.mono + 86400 * S


def test_the_real_offset_matches_the_clocks() -> None:
    expected = time.time_ns() - time.monotonic_ns()
    assert abs(WallClock().offset_ns() - expected) < 5_000_000


def host_offset_in(*wrapper: str) -> int:
    """The offset WallClock computes in a child process started through `wrapper`."""
    code = (f"import sys; sys.path.insert(0, {SRC!r}); "
            "from tcpaccept.output.clock import WallClock; print(WallClock().offset_ns())")
    out = subprocess.run([*wrapper, sys.executable, "-c", code], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return int(out)


def test_event_times_are_right_inside_a_time_namespace() -> None:
    """`unshare --time --monotonic 86400`: the child's CLOCK_MONOTONIC is a day ahead of
    the kernel's bpf_ktime_get_ns(); the offset it computes must still be the host's."""
    host = time.time_ns() - time.monotonic_ns()
    inside = host_offset_in("unshare", "--time", "--monotonic", "86400")
    naive = host - 86400 * S  # what time.time_ns() - time.monotonic_ns() gives in there
    assert abs(inside - host) < 50_000_000, (inside - host) / S
    assert abs(inside - naive) > 86000 * S
