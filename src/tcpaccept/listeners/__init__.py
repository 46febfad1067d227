"""Every TCP listener of the machine, read from the kernel with CAP_BPF + CAP_PERFMON only.

bpf/listeners.bpf.c is a task_file iterator (kernel 5.8+): one read walks every open file of
every task in the reader's pid namespace and writes a record per listening TCP socket:
network namespace, address, port, accept queue (backlog, backlog max), SYN queue, sk_drops,
and the owning process. Unlike sock_diag it needs no setns() into each network namespace
(CAP_SYS_ADMIN) and no /proc/PID/fd of other users (CAP_SYS_PTRACE) to name the owner.

What it cannot see: listeners held only by processes outside the reader's pid namespace
(run in the host's: hostPID), and a listening socket no process holds an fd of (one passed
in flight over a unix socket, or held by the kernel).

Layout: record.py (the record, decoded by name through the object's BTF), table.py (merging
reads: one entry per socket, drop counters from the first sighting), watch.py (the BPF
object and the background reader with its schedule).

Read-only API for the metrics and the summary: ListenerWatch.snapshot() -> Snapshot, whose
`listeners` maps a socket inode to a frozen ListenerState.
"""

from __future__ import annotations

from .record import ListenerRecord, RecordLayout
from .table import ListenerState, ListenerTable, Snapshot
from .watch import (
    ListenerReader,
    ListenerWatch,
    ListenerWatchError,
    interval_for,
    outside_host_pid_namespace_warning,
)

__all__ = [
    "ListenerReader",
    "ListenerRecord",
    "ListenerState",
    "ListenerTable",
    "ListenerWatch",
    "ListenerWatchError",
    "RecordLayout",
    "Snapshot",
    "interval_for",
    "outside_host_pid_namespace_warning",
]
