"""Summary mode's arithmetic and the per-CPU merge, without a kernel (synthetic map reads)."""

from __future__ import annotations

import io
import json
from types import MappingProxyType
from typing import Optional

import pytest

from tcpaccept import aggregate
from tcpaccept.aggregate import (
    LATENCY_SLOTS,
    Layouts,
    ListenerKey,
    ListenerTotals,
    merge_cpus,
    remote_address,
    slot_max_us,
    slot_percentile_us,
)
from tcpaccept.btf import Btf
from tcpaccept.errors import TcpacceptError
from tcpaccept.event import default_object_path
from tcpaccept.listeners.table import ListenerState
from tcpaccept.listeners.table import Snapshot as SocketsRead
from tcpaccept.model import Drop, Lost
from tcpaccept.sink import LostNotices
from tcpaccept.summary import Log2Histogram, SummarySink
from tests.support.records import histogram_of

WILDCARD = ListenerKey(netns=1, family=4, laddr="0.0.0.0", lport=80, cgroup_id=9)
OTHER = ListenerKey(netns=1, family=6, laddr="::1", lport=443, cgroup_id=9)


def _slots(**at: int) -> tuple[int, ...]:
    slots = [0] * LATENCY_SLOTS
    for name, count in at.items():
        slots[int(name[1:])] = count
    return tuple(slots)


class FakeReader:
    """What SummarySink reads, as a test sets it between intervals."""

    def __init__(self) -> None:
        self.listeners: dict[ListenerKey, ListenerTotals] = {}
        self.remotes: dict[tuple[ListenerKey, str], int] = {}
        self.inserts = 0
        self.epochs: list[int] = []
        self.expired: list[ListenerKey] = []

    def next_epoch(self) -> int:
        self.epochs.append(len(self.epochs))
        return self.epochs[-1]

    def read_listeners(self, peak_epoch: Optional[int] = None
                       ) -> dict[ListenerKey, ListenerTotals]:
        return dict(self.listeners)

    def expire(self, listeners: dict, now_ns: int, ttl_ns: int) -> list[ListenerKey]:
        return list(self.expired)

    def read_remotes(self) -> dict[tuple[ListenerKey, str], int]:
        return dict(self.remotes)

    def remotes_evicted(self, entries_now: int) -> int:
        return max(0, self.inserts - entries_now)

    def listeners_overflow(self) -> int:
        return 0


def _sink(reader: FakeReader) -> tuple[SummarySink, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    sink = SummarySink(out, interval=60, as_json=True, notices=LostNotices(err),
                       aggregates=reader)  # type: ignore[arg-type]
    return sink, out, err


def _objects(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_percentiles_are_the_upper_edge_of_the_log2_bucket() -> None:
    # 99 values in slot 11 ([1024, 2048) us), 1 in slot 14 ([8192, 16384) us).
    slots = _slots(s11=99, s14=1)
    assert slot_percentile_us(slots, 0.50) == 2048
    assert slot_percentile_us(slots, 0.99) == 2048
    assert slot_percentile_us(slots, 1.0) == 16384
    assert slot_max_us(slots) == 16384
    assert slot_percentile_us(_slots(), 0.5) is None


def test_log2_histogram_buckets_like_bcc() -> None:
    h = histogram_of((0, 1, 2, 3, 100, 100, 1000))
    assert h.rows()[:4] == [(0, 0, 1), (1, 1, 1), (2, 3, 2), (4, 7, 0)]
    assert (64, 127, 2) in h.rows() and h.rows()[-1] == (512, 1023, 1)
    assert Log2Histogram(_slots(s2=2, s7=2)).rows()[0] == (2, 3, 2)


LAYOUTS = Layouts.of_file(str(default_object_path()))


def _cpu(accepts: int, last_seen: int, backlog: int, peak: int, epoch: int, pid: int,
         comm: bytes, slot: int = 3) -> dict:
    """One CPU's struct listener_stats as the kernel writes it, decoded by name."""
    slots = [0] * LATENCY_SLOTS
    slots[slot] = accepts
    stats = LAYOUTS.stats
    raw = stats.encode(accepts=accepts, latency_count=accepts, latency_sum_ns=accepts * 5000,
                       last_seen_ns=last_seen, latency_slots=slots, backlog=backlog,
                       backlog_peak=peak, backlog_max=128, peak_epoch=epoch, pid=pid,
                       comm=comm)
    return stats.decode(raw)


def test_cpus_merge_sum_counts_max_peaks_and_take_the_latest_cpus_last_values() -> None:
    totals = merge_cpus([_cpu(3, 200, 4, 9, 1, 11, b"old"),
                         _cpu(5, 300, 2, 7, 1, 22, b"new"),
                         _cpu(0, 0, 0, 0, 0, 0, b"")], peak_epoch=1)
    assert (totals.accepts, totals.latency_count, totals.latency_sum_ns) == (8, 8, 40000)
    assert totals.latency_slots[3] == 8
    assert (totals.backlog, totals.pid, totals.comm, totals.last_seen_ns) == (2, 22, "new", 300)
    assert (totals.backlog_peak, totals.backlog_max) == (9, 128)
    # A peak from another interval (epoch) does not count for this one.
    assert merge_cpus([_cpu(3, 200, 4, 9, 0, 11, b"x")], peak_epoch=1).backlog_peak == 0


def test_remote_addresses_are_shown_unmapped() -> None:
    assert remote_address(b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 1])) == "10.0.0.1"
    assert remote_address(b"\0" * 15 + b"\x01") == "::1"


def test_summary_prints_deltas_per_listener_and_top_remotes() -> None:
    reader = FakeReader()
    sink, out, err = _sink(reader)
    reader.listeners = {
        WILDCARD: ListenerTotals(accepts=2, latency_count=2, latency_slots=_slots(s11=2),
                                 backlog=1, backlog_max=8, backlog_peak=3, pid=7, comm="srv"),
        OTHER: ListenerTotals(accepts=1, latency_count=1, latency_slots=_slots(s5=1),
                              pid=8, comm="tls")}
    reader.remotes = {(WILDCARD, "10.0.0.1"): 2, (OTHER, "10.0.0.2"): 1}
    reader.inserts = 2
    sink.flush_interval()
    # Second interval: 3 more on the wildcard listener, none on the other.
    reader.listeners[WILDCARD] = ListenerTotals(
        accepts=5, latency_count=5, latency_slots=_slots(s11=2, s14=3), pid=7, comm="srv")
    reader.remotes[(WILDCARD, "10.0.0.3")] = 3
    reader.inserts = 3
    sink.handle([Lost(3)])
    sink.close()
    assert err.getvalue() == "Lost 3 events\nLost 3 events in total\n"
    first, second, *histograms = _objects(out)
    assert [(r["lport"], r["accepts"]) for r in first["listeners"]] == [(80, 2), (443, 1)]
    row = first["listeners"][0]
    assert (row["laddr"], row["pid"], row["comm"], row["backlog_peak"]) == ("0.0.0.0", 7,
                                                                          "srv", 3)
    assert row["queue_latency_p50_us"] == 2048
    assert first["top_remotes"] == [{"raddr": "10.0.0.1", "accepts": 2},
                                    {"raddr": "10.0.0.2", "accepts": 1}]
    assert [(r["lport"], r["accepts"]) for r in second["listeners"]] == [(80, 3)]
    assert second["listeners"][0]["queue_latency_p50_us"] == 16384  # this interval's slots
    assert second["top_remotes"] == [{"raddr": "10.0.0.3", "accepts": 3}]
    assert second["remotes_evicted"] == 0
    assert [(h["event"], h["lport"]) for h in histograms] == [("histogram", 80),
                                                              ("histogram", 443)]
    assert sum(b["count"] for b in histograms[0]["buckets"]) == 5


def test_an_evicting_remotes_map_says_so_and_a_restarted_count_is_all_new() -> None:
    reader = FakeReader()
    sink, out, _err = _sink(reader)
    reader.listeners = {WILDCARD: ListenerTotals(accepts=10, pid=7, comm="srv")}
    reader.remotes = {(WILDCARD, "10.0.0.1"): 10}
    reader.inserts = 1
    sink.flush_interval()
    # The LRU evicted 10.0.0.1 and took it back: its count restarted at 2.
    reader.listeners = {WILDCARD: ListenerTotals(accepts=12, pid=7, comm="srv")}
    reader.remotes = {(WILDCARD, "10.0.0.1"): 2}
    reader.inserts = 500
    sink.flush_interval()
    second = _objects(out)[1]
    assert second["top_remotes"] == [{"raddr": "10.0.0.1", "accepts": 2}]
    assert second["remotes_evicted"] == 499


def test_drops_join_the_row_of_their_listening_socket_or_make_their_own() -> None:
    reader = FakeReader()
    sink, out, _err = _sink(reader)
    reader.listeners = {WILDCARD: ListenerTotals(accepts=4, pid=7, comm="srv")}
    drop = Drop(laddr="0.0.0.0", lport=80, family=4, pid=7, comm="srv", backlog=8,
                backlog_max=8, dropped=5, inode=1, netns=1)
    lonely = Drop(laddr="127.0.0.1", lport=81, family=4, pid=9, comm="stuck", backlog=1,
                  backlog_max=1, dropped=2, inode=2, netns=1)
    sink.handle([drop, lonely])
    sink.flush_interval()
    rows = {r["lport"]: r for r in _objects(out)[0]["listeners"]}
    assert (rows[80]["accepts"], rows[80]["drops"], rows[80]["backlog_peak"]) == (4, 5, 8)
    assert (rows[81]["accepts"], rows[81]["drops"], rows[81]["comm"]) == (0, 2, "stuck")


def test_with_the_listener_table_drops_are_each_sockets_counter_between_snapshots(
        ) -> None:
    """The drop column from the same table as the metrics: each socket's counter against
    the previous snapshot (drop items are the table's already: not counted twice); a
    socket missing from one read resumes instead of reporting its history again."""
    reader = FakeReader()
    sink, out, _err = _sink(reader)
    reader.listeners = {WILDCARD: ListenerTotals(accepts=4, pid=7, comm="srv")}

    def socket(inode: int, lport: int, dropped: int, comm: str) -> ListenerState:
        return ListenerState(inode, 1, 2, "0.0.0.0" if lport == 80 else "127.0.0.1", lport,
                             1, 8, 0, dropped, 7, comm, 1, 0)

    reads = [SocketsRead(MappingProxyType({1: socket(1, 80, 5, "srv"),
                                           2: socket(2, 81, 0, "stuck")}), 1, 0.0, 1)]
    sink.table.sockets_source = lambda: reads[-1]
    sink.handle([Drop(laddr="0.0.0.0", lport=80, family=4, pid=7, comm="srv", backlog=8,
                      backlog_max=8, dropped=5, inode=1, netns=1)])
    sink.flush_interval()
    reads.append(SocketsRead(MappingProxyType({2: socket(2, 81, 3, "stuck")}), 2, 0.0, 2))
    sink.flush_interval()
    reads.append(SocketsRead(MappingProxyType({1: socket(1, 80, 6, "srv"),
                                               2: socket(2, 81, 3, "stuck")}), 3, 0.0, 3))
    sink.flush_interval()
    first, second, third = (
        {r["lport"]: r for r in o["listeners"]} for o in _objects(out))
    assert (first[80]["accepts"], first[80]["drops"]) == (4, 5) and 81 not in first
    assert (second[81]["accepts"], second[81]["drops"], second[81]["comm"]) == (0, 3, "stuck")
    assert third[80]["drops"] == 1 and 81 not in third


def test_quiet_interval_prints_nothing_in_text_mode() -> None:
    reader = FakeReader()
    out = io.StringIO()
    sink = SummarySink(out, interval=60, as_json=False, notices=LostNotices(io.StringIO()),
                       aggregates=reader)  # type: ignore[arg-type]
    reader.listeners = {WILDCARD: ListenerTotals(accepts=1, pid=7, comm="srv")}
    sink.flush_interval()
    printed = out.getvalue()
    sink.flush_interval()  # nothing new
    assert "0.0.0.0:80" in printed and out.getvalue() == printed


def test_the_objects_aggregation_structs_are_what_the_reader_unpacks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    btf = Btf.parse_elf(str(default_object_path()))
    try:
        layouts = Layouts.of(btf, "tcpaccept.bpf.o")  # the built object matches
        assert layouts.stats.sizes["latency_slots"] == 8 * LATENCY_SLOTS
        key = ListenerKey(netns=7, family=6, laddr="::1", lport=443, cgroup_id=99)
        assert ListenerKey.of(layouts.key.decode(layouts.key.encode(**key.fields()))) == key
        needed = aggregate.NEEDED["listener_stats"]
        monkeypatch.setitem(aggregate.NEEDED, "listener_stats", {**needed, "backlog": 8})
        with pytest.raises(TcpacceptError, match=r"struct listener_stats member backlog is "
                                                 r"4 bytes, this tcpaccept reads 8 bytes"):
            Layouts.of(btf, "tcpaccept.bpf.o")
        monkeypatch.setitem(aggregate.NEEDED, "listener_stats", {**needed, "gone": 4})
        with pytest.raises(TcpacceptError, match=r"member gone is missing"):
            Layouts.of(btf, "tcpaccept.bpf.o")
    finally:
        btf.close()
