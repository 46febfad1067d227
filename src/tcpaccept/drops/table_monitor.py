"""TableDropMonitor: listener drops from the kernel's listener table (listeners/), as Drop.

The same reports as ListenerDropMonitor (sock_diag) without its privileges: every network
namespace with CAP_BPF + CAP_PERFMON, the owner's pid and comm from the iterator itself.
The counter is the same sk_drops (see this package's docstring for what it counts).
"""

from __future__ import annotations

from typing import Optional

from ..listeners.table import ListenerState, Snapshot
from ..listeners.watch import ListenerWatch, ListenerWatchError
from ..model import Drop
from .abi import DropMonitorError

_GONE_MAX = 65536


class TableDropMonitor:
    """A DropSource over a started ListenerWatch (its first read is the baseline: drops
    from before tracing are not reported; a listener created later reports all of its).
    poll() only looks at the latest snapshot, it never waits for the kernel; flush() reads
    once more, at exit."""

    # poll() only compares a read counter: look often, so that a drop is reported within
    # a tick of the read that saw it (the reads themselves keep their own schedule).
    poll_interval_s = 0.1

    def __init__(self, watch: ListenerWatch, ports: Optional[frozenset[int]] = None) -> None:
        self.watch = watch
        self._ports = ports
        self._warnings: list[str] = []
        self._reported: dict[int, int] = {}  # inode -> `dropped` already reported
        self._gone: dict[int, int] = {}  # the same for listeners no longer in the table
        self._last_read = 0
        watch.on_error(self._warnings.append)
        self._last_read = watch.snapshot().reads
        self._reported = {inode: s.dropped for inode, s in watch.snapshot().listeners.items()}

    def poll(self) -> list[Drop]:
        snapshot = self.watch.snapshot()
        if snapshot.reads == self._last_read:
            return []  # nothing new read since the last poll
        self._last_read = snapshot.reads
        return self._diff(snapshot)

    def flush(self) -> list[Drop]:
        try:
            self.watch.refresh()
        except ListenerWatchError as exc:  # the loop warns, as for a failed sock_diag poll
            raise DropMonitorError(str(exc)) from None
        return self.poll()

    def listeners(self) -> Snapshot:
        """The latest listener table (every listener, unfiltered), for metrics and summary."""
        return self.watch.snapshot()

    def warnings(self) -> list[str]:
        notes, self._warnings = self._warnings, []
        return notes

    def close(self) -> None:
        self.watch.close()

    def __enter__(self) -> TableDropMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _diff(self, snapshot: Snapshot) -> list[Drop]:
        reports: list[Drop] = []
        reported: dict[int, int] = {}
        for inode, state in snapshot.listeners.items():
            before = self._reported.get(inode)
            if before is None:
                before = self._gone.pop(inode, 0)
            reported[inode] = state.dropped
            if state.dropped > before and self._wanted(state):
                reports.append(_drop(state, state.dropped - before, snapshot.read_ns))
        for inode, dropped in self._reported.items():
            if inode not in reported:
                if len(self._gone) >= _GONE_MAX:
                    del self._gone[next(iter(self._gone))]
                self._gone[inode] = dropped
        self._reported = reported
        return reports

    def _wanted(self, state: ListenerState) -> bool:
        return self._ports is None or state.lport in self._ports


def _drop(state: ListenerState, dropped: int, read_ns: int) -> Drop:
    return Drop(laddr=state.laddr, lport=state.lport, family=state.family, pid=state.pid,
                comm=state.comm, backlog=state.backlog, backlog_max=state.backlog_max,
                dropped=dropped, inode=state.inode, netns=state.netns, time_ns=read_ns)
