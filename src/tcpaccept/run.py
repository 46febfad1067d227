"""The event loop: poll the tracer, decode each record once, hand model objects to the sink.

Nothing here formats or prints (but for warnings about the drop monitor, which never stop
tracing): output belongs to the sinks, resources to the session.
"""

from __future__ import annotations

import signal
import time
from typing import Callable, Optional, Protocol, Sequence

from .drops import DropMonitorError
from .model import Accept, Drop, Lost
from .sink import Sink

BANNER = "Tracing TCP accepts. Hit Ctrl-C to end."
# How long a lone event may wait: the kernel wakes us only for batches (tcpaccept.bpf.c).
POLL_MS = 50
DROPS_POLL_S = 1.0
LOST_CHECK_S = 1.0
# How long a stop may drain the ring (a full 4 MiB ring, ~37k rows, takes ~0.2 s).
DRAIN_S = 0.3


class RecordSource(Protocol):
    """What the loop needs of the tracer."""

    def poll(self, timeout_ms: int) -> list[bytes]: ...
    def lost_events(self) -> int: ...


class DropSource(Protocol):
    # How often poll() is worth calling: sock_diag samples in poll() (once a second); the
    # listener table reads on its own thread, and poll() only looks for a newer read.
    poll_interval_s: float

    def poll(self) -> list[Drop]: ...
    def flush(self) -> list[Drop]: ...
    def warnings(self) -> list[str]: ...


# SIGHUP is a closed terminal (or an ssh session gone): the default action would kill us
# mid-batch, without the drain, the flush and the total line that SIGTERM gets.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopFlag:
    """Set by SIGINT/SIGTERM/SIGHUP (the poll returns early, EINTR) or by ``request`` (the
    output's reader went away: any thread); the loop ends within one POLL_MS."""

    def __init__(self) -> None:
        self.set = False

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            # `nohup tcpaccept` ignores SIGHUP on purpose: an inherited SIG_IGN stays.
            if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
                continue
            signal.signal(signum, self._on_signal)

    def request(self) -> None:
        self.set = True

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.set = True


class _LostCounter:
    """Turns the kernel's running total of lost events into Lost items (deltas)."""

    def __init__(self, tracer: RecordSource) -> None:
        self._tracer = tracer
        self._reported = 0

    def delta(self) -> list[Lost]:
        lost = self._tracer.lost_events()
        if lost <= self._reported:
            return []
        fresh, self._reported = lost - self._reported, lost
        return [Lost(fresh, "ring buffer")]


class _DropPoller:
    """Polls the drop monitor; a failed poll is one warning and a retry, never the end."""

    def __init__(self, drops: DropSource, warn: Callable[[str], None]) -> None:
        self._drops = drops
        self._warn = warn
        self._failing = False

    def _call(self, poll: Callable[[], list[Drop]]) -> list[Drop]:
        try:
            reports = poll()
        except DropMonitorError as exc:
            if not self._failing:  # once per outage, not once a second
                self._warn(f"listener drops: {exc} (retrying every "
                           f"{self._drops.poll_interval_s:g} s)")
            self._failing = True
            return []
        if self._failing:
            self._warn("listener drops: sampling works again")
            self._failing = False
        for message in self._drops.warnings():
            self._warn(f"listener drops: {message}")
        return reports

    def poll(self) -> list[Drop]:
        return self._call(self._drops.poll)

    def flush(self) -> list[Drop]:
        return self._call(self._drops.flush)


def run(
    tracer: RecordSource,
    decode: Callable[[bytes], Accept],
    sink: Sink,
    stop: StopFlag,
    warn: Callable[[str], None],
    count: Optional[int] = None,
    duration: Optional[float] = None,
    drops: Optional[DropSource] = None,
    every_second: Sequence[Callable[[], None]] = (),
) -> int:
    """Trace until a signal, the duration or the count; returns the number of accepts.
    ``every_second`` are chores such as re-resolving the container filter's cgroups."""
    deadline = time.monotonic() + duration if duration else None
    lost = _LostCounter(tracer)
    poller = _DropPoller(drops, warn) if drops is not None else None
    seen = 0
    next_lost_check = 0.0
    next_drops_poll = time.monotonic() + (drops.poll_interval_s if drops else DROPS_POLL_S)

    def deliver(records: list[bytes]) -> bool:
        """Decode and hand on; True when the count is reached."""
        nonlocal seen
        if count is not None and seen + len(records) >= count:
            records = records[: count - seen]
        sink.handle([decode(record) for record in records])
        seen += len(records)
        return count is not None and seen >= count

    done = False
    while not stop.set and not done:
        timeout = POLL_MS
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            timeout = max(1, min(timeout, int(remaining * 1000)))
        records = tracer.poll(timeout)
        if records:
            done = deliver(records)
        now = time.monotonic()
        if now >= next_lost_check:
            sink.handle(lost.delta())
            for chore in every_second:
                chore()
            next_lost_check = now + LOST_CHECK_S
        if poller is not None and drops is not None and now >= next_drops_poll:
            sink.handle(poller.poll())
            next_drops_poll = now + drops.poll_interval_s
        sink.tick(now)
    # Drain what is already queued so that a stop never drops accepted events silently;
    # but for at most DRAIN_S: under a flood that outpaces us (a starved CPU) the ring
    # never empties, and a stop must still be a stop (SIGTERM within 1 s).
    drain_until = time.monotonic() + DRAIN_S
    while not done:
        if time.monotonic() >= drain_until:
            warn(f"stopped draining after {DRAIN_S:g} s (accepts kept arriving): rows "
                 "still queued in the kernel ring at exit are not shown")
            break
        records = tracer.poll(0)
        if not records:
            break
        done = deliver(records)
    if poller is not None:
        sink.handle(poller.flush())  # drops not yet reported are reported once more
    sink.handle(lost.delta())
    return seen
