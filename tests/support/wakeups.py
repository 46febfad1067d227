"""How long this machine keeps a waking thread off the CPU, measured while a test times
something: the allowance a promptness bound needs on a loaded machine, taken from the
machine itself instead of a guess.

A thread sleeps PERIOD_S again and again; each wake-up later than asked is time a waking
thread could not run. Their sum over the window (`late_s`) is what a timed exit path with a
few wake-ups of its own can have lost to the load. Beside two test runs on 2 cores, during
an accept flood, a single 20 ms wait of the tracer's exit path took 0.9 s; sleeps in a
separate process were up to 0.29 s late at the same time."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Optional

PERIOD_S = 0.02


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
