"""ListenerWatch: reads the listener iterator on a schedule in a thread of its own.

The event loop never waits for a read: it takes the latest immutable Snapshot. A read's
cost grows with the open files of the whole machine (the iterator visits every file of every
task), not with the listeners, so the interval stretches with the measured cost to keep the
agent's share of one CPU at CPU_SHARE (bench/listener_read_cost.py has the figures).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from .. import libbpf
from ..errors import TcpacceptError
from ..pidns import INITIAL_PID_NS_INO
from .record import RecordLayout, object_path
from .table import EMPTY, ListenerTable, Snapshot

PROGRAM = "dump_listeners"
# Bytes per read() of the iterator: small, so that each read() returns to user space (where
# the CPU can be handed on) after a few thousand files; see TICK_FILES in listeners.bpf.c.
READ_BYTES = 4096
MIN_INTERVAL_S = 1.0  # the drop rows' and metrics' resolution on a small host
# A read may take at most 2% of the time between reads (of one CPU, on the reader thread).
# Measured on 6.18 (bench/listener_read_cost.py, 1,000 listeners, a shared 2-core guest, four
# runs): one read 1.4-3.4 ms at 2k open files (read every 1 s), 10-64 ms at 20k (1-1.3 s),
# 59-136 ms at 100k (3-7 s): about 1 us per open file, in the kernel; decoding costs only
# for records that changed since the last read.
CPU_SHARE = 0.02
COST_SMOOTHING = 0.2  # weight of the latest read in the moving average of the cost


class ListenerWatchError(TcpacceptError):
    """The iterator cannot be loaded, attached or read on this kernel."""


def outside_host_pid_namespace_warning() -> Optional[str]:
    """The iterator walks the reader's pid namespace only: say so once when that is not
    the host's."""
    try:
        ino = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    if ino == INITIAL_PID_NS_INO:
        return None
    return (f"outside the host pid namespace (pid:[{ino}]): only listeners held by processes "
            "of this namespace are seen (run in the host's: hostPID)")


def interval_for(read_cost_s: float) -> float:
    return max(MIN_INTERVAL_S, read_cost_s / CPU_SHARE)


class ListenerReader:
    """The BPF side: one object, one iterator link; read() is one walk, synchronous."""

    def __init__(self, path: Optional[Path] = None) -> None:
        path = path or object_path()
        if not path.is_file():
            raise ListenerWatchError(f"{path} is missing: build it (make -C src/tcpaccept/bpf)")
        self._obj: Optional[libbpf.BpfObject] = None
        self._link: Optional[libbpf.Link] = None
        try:
            self.layout = RecordLayout.from_object(path)
            self._obj = libbpf.BpfObject(str(path))
            self._obj.load()
            self._link = self._obj.program(PROGRAM).attach_iter()
        except (libbpf.LibbpfError, TcpacceptError) as exc:
            self.close()
            raise ListenerWatchError(f"task_file iterator: {exc}") from None

    def read_raw(self) -> bytes:
        if self._link is None:
            raise ListenerWatchError("listener reader is closed")
        try:
            fd = self._link.open_iterator()
        except libbpf.LibbpfError as exc:
            raise ListenerWatchError(str(exc)) from None
        try:  # each read() runs the program in the kernel; os.read releases the GIL
            return b"".join(iter(lambda: os.read(fd, READ_BYTES), b""))
        except OSError as exc:
            raise ListenerWatchError(f"read iterator {PROGRAM}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None


class ListenerWatch:
    """The latest listener table, refreshed in the background; read-only to its users.

    start() makes the first read synchronously (the baseline: the table then holds every
    listener that exists at start) and starts the thread. snapshot() never blocks on the
    kernel. refresh() reads now, on the caller's thread (at exit, for exact final counts).
    """

    def __init__(self, reader: Optional[ListenerReader] = None) -> None:
        self._reader = reader or ListenerReader()
        self._table = ListenerTable()
        self._snapshot = EMPTY
        self._lock = threading.Lock()  # one read at a time: the table is not thread-safe
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error_sinks: list[Callable[[str], None]] = []
        self.interval_s = MIN_INTERVAL_S
        self._cost_s = 0.0  # a moving average of the reads' cost

    def on_error(self, sink: Callable[[str], None]) -> None:
        """sink(message) once per outage of the background reads (from that thread)."""
        self._error_sinks.append(sink)

    def start(self) -> Snapshot:
        snapshot = self.refresh()
        self._thread = threading.Thread(target=self._run, name="listener-table", daemon=True)
        self._thread.start()
        return snapshot

    def snapshot(self) -> Snapshot:
        return self._snapshot  # one reference read: atomic under the GIL

    def refresh(self) -> Snapshot:
        with self._lock:
            started = time.perf_counter()
            raw = self._reader.read_raw()
            records = self._reader.layout.decode_all(raw)
            cost = time.perf_counter() - started
            self._snapshot = self._table.merge(records, time.time_ns(), cost)
            # Smoothed: one read slowed by a busy machine should not stretch the interval.
            self._cost_s = cost if self._snapshot.reads == 1 else (
                self._cost_s + COST_SMOOTHING * (cost - self._cost_s))
            self.interval_s = interval_for(self._cost_s)
            return self._snapshot

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
            except ListenerWatchError as exc:
                if not failing:
                    for sink in self._error_sinks:
                        sink(f"{exc} (retrying every {self.interval_s:g} s)")
                failing = True
                continue
            failing = False

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._reader.close()

    def __enter__(self) -> ListenerWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
