"""The listener table's bookkeeping on synthetic records (the kernel side is
tests/kernel/test_listener_table.py): decoding by name, one entry per socket, drop
counters from the first sighting, and the drop rows made from them."""

from __future__ import annotations

import socket

import pytest

from tcpaccept.drops.table_monitor import TableDropMonitor
from tcpaccept.listeners import ListenerTable, RecordLayout, Snapshot, interval_for
from tcpaccept.listeners.record import ListenerRecord, object_path
from tcpaccept.listeners.table import EMPTY


def rec(inode: int = 7, drops: int = 0, pid: int = 100, **kw: object) -> ListenerRecord:
    values = dict(sock_inode=inode, netns=4026531840, pid=pid, backlog=0, backlog_max=128,
                  syn_queue=0, drops=drops, family=socket.AF_INET, lport=8080,
                  laddr="127.0.0.1", comm="srv")
    values.update(kw)
    return ListenerRecord(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def layout() -> RecordLayout:
    return RecordLayout.from_object(object_path())


def test_records_decode_by_name_from_the_objects_btf(layout: RecordLayout) -> None:
    v6 = socket.inet_pton(socket.AF_INET6, "fd00::1")
    encode = layout.struct_layout.encode  # a raw record as the kernel writes it
    raw = (encode(sock_inode=1 << 40, netns=4026532000, pid=42, backlog=3, backlog_max=4,
                  syn_queue=5, drops=6, family=socket.AF_INET, lport=443,
                  laddr=socket.inet_aton("10.1.2.3") + bytes(12), comm=b"nginx")
           + encode(sock_inode=9, family=socket.AF_INET6, lport=80, laddr=v6, comm=b"x" * 16)
           + b"\x01\x02")  # a torn tail is not a record
    first, second = layout.decode_all(raw)
    assert first == ListenerRecord(1 << 40, 4026532000, 42, 3, 4, 5, 6, socket.AF_INET, 443,
                                   "10.1.2.3", "nginx")
    assert (second.laddr, second.lport, second.comm) == ("fd00::1", 80, "x" * 16)
    assert layout.decode_all(raw)[0] is first  # unchanged: last read's decoding


def test_listeners_present_at_the_first_read_start_from_zero_later_ones_from_their_count() -> None:
    table = ListenerTable()
    first = table.merge([rec(inode=1, drops=50)], 1, 0.0)
    assert first.listeners[1].dropped == 0  # history, not news
    second = table.merge([rec(inode=1, drops=53), rec(inode=2, drops=4)], 2, 0.0)
    assert (second.listeners[1].dropped, second.listeners[2].dropped) == (3, 4)
    assert second.listeners[2].first_seen_ns == 2 and second.listeners[1].first_seen_ns == 1


def test_forked_workers_are_one_listener_owned_by_the_lowest_pid_pid_1_last() -> None:
    table = ListenerTable()
    snap = table.merge([rec(pid=300, comm="worker"), rec(pid=200, comm="master"),
                        rec(pid=1, comm="systemd")], 1, 0.0)
    (state,) = snap.listeners.values()
    assert (state.pid, state.comm, state.holders) == (200, "master", 3)


def test_the_wrapping_counter_and_a_listener_that_comes_back() -> None:
    table = ListenerTable()
    table.merge([rec(drops=0xFFFFFFFE)], 1, 0.0)
    assert table.merge([rec(drops=1)], 2, 0.0).listeners[7].dropped == 3
    assert table.merge([], 3, 0.0).listeners == {}  # a read that raced with it
    assert table.merge([rec(drops=5)], 4, 0.0).listeners[7].dropped == 7  # resumes


class _Watch:
    """What TableDropMonitor uses of a ListenerWatch, fed by hand."""

    def __init__(self) -> None:
        self.snap: Snapshot = EMPTY
        self.table = ListenerTable()

    def feed(self, *records: ListenerRecord) -> None:
        self.snap = self.table.merge(records, self.snap.read_ns + 1, 0.001)

    def snapshot(self) -> Snapshot:
        return self.snap

    def refresh(self) -> Snapshot:
        return self.snap

    def on_error(self, sink: object) -> None:
        pass

    def close(self) -> None:
        pass


def test_drop_rows_are_the_rises_since_the_last_poll_and_only_for_wanted_ports() -> None:
    watch = _Watch()
    watch.feed(rec(inode=1, drops=10), rec(inode=2, drops=10, lport=9))
    monitor = TableDropMonitor(watch, frozenset({8080}))  # type: ignore[arg-type]
    assert monitor.poll() == []
    watch.feed(rec(inode=1, drops=14, backlog=2), rec(inode=2, drops=20, lport=9),
               rec(inode=3, drops=2, comm="late"))
    rows = monitor.poll()
    assert [(r.inode, r.dropped, r.backlog, r.comm) for r in rows] == [
        (1, 4, 2, "srv"), (3, 2, 0, "late")]
    assert monitor.poll() == []  # no new read, nothing new
    watch.feed(rec(inode=1, drops=14), rec(inode=3, drops=2))
    assert monitor.poll() == []


def test_reads_come_every_second_or_50_times_their_cost() -> None:
    assert (interval_for(0.003), interval_for(0.1)) == (1.0, pytest.approx(5.0))
