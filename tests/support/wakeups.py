"""How long this machine keeps a waking thread off the CPU, measured while a test times
something: the allowance a promptness bound needs on a loaded machine, taken from the
machine itself instead of a guess.

A thread sleeps PERIOD_S again and again; each wake-up later than asked is time a waking
thread could not run. Their sum over the window (`late_s`) is what a timed exit path with a
few wake-ups of its own can have lost to the load. Beside two test runs on 2 cores, during
an accept flood, a single 20 ms wait of the tracer's exit path took 0.9 s; sleeps in a
separate process were up to 0.29 s late at the same time.

timed_sigterm() times an exit with that measure beside it; assert_prompt() holds it to a
plain exit of the same command plus what the machine was seen to hold back."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Optional

PERIOD_S = 0.02
# What a stalled output or a closed pipe may add to an exit: the writer's last drain
# (run.DRAIN_S, 0.3 s) and the reader watch (WATCH_S, 0.25 s), with room to spare.
STALL_ALLOWANCE_S = 1.0


class WakeupDelays:
    """`with WakeupDelays() as delays:` ... then `delays.late_s` and `delays.worst_s`."""

    def __init__(self) -> None:
        self.late_s = 0.0
        self.worst_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wakeup-delays", daemon=True)

    def _run(self) -> None:
        while True:
            asked = time.monotonic()
            if self._stop.wait(PERIOD_S):
                return
            late = time.monotonic() - asked - PERIOD_S
            if late > 0:
                self.late_s += late
                self.worst_s = max(self.worst_s, late)

    def __enter__(self) -> WakeupDelays:
        self._thread.start()
        return self

    def __exit__(self, kind: Optional[type], value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self._stop.set()
        self._thread.join()


def timed_sigterm(proc: subprocess.Popen, timeout: float = 5) -> tuple[float, WakeupDelays]:
    """Seconds from SIGTERM to exit (at most `timeout`), and how late wake-ups were."""
    with WakeupDelays() as late:
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        took = time.monotonic() - started
    return took, late


def assert_prompt(took: float, references: Sequence[float], late: WakeupDelays,
                  allowance: float = STALL_ALLOWANCE_S, *, what: str) -> None:
    """took is within `allowance` of a plain exit (the slowest of those measured before and
    after: the load may change meanwhile), plus the time the machine kept waking threads
    waiting while took was measured."""
    reference = max(references)
    assert took < reference + allowance + late.late_s, (
        f"{took:.2f} s {what}; a plain SIGTERM exit took {reference:.2f} s, wake-ups were "
        f"{late.late_s:.2f} s late in all (worst {late.worst_s:.2f} s)")
