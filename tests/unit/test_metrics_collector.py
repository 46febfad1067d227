"""The metrics collector's merge, labels, buckets and expiry, on synthetic map reads."""

from __future__ import annotations

from types import MappingProxyType
from typing import Optional

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from tcpaccept.aggregate import LATENCY_SLOTS, ListenerKey, ListenerTotals
from tcpaccept.listeners.table import ListenerState
from tcpaccept.listeners.table import Snapshot as SocketsRead
from tcpaccept.metrics import DEFAULT_LABELS, KNOWN_LABELS, MetricsSink
from tcpaccept.model import Container, Drop, Lost

A = ListenerKey(netns=1, family=4, laddr="0.0.0.0", lport=80, cgroup_id=100)
B = ListenerKey(netns=2, family=4, laddr="0.0.0.0", lport=80, cgroup_id=200)
SECOND = 1_000_000_000


class FakeReader:
    def __init__(self) -> None:
        self.listeners: dict[ListenerKey, ListenerTotals] = {}
        self.deleted: list[ListenerKey] = []

    def read_listeners(self, peak_epoch: Optional[int] = None
                       ) -> dict[ListenerKey, ListenerTotals]:
        return dict(self.listeners)

    def expire(self, listeners: dict, now_ns: int, ttl_ns: int) -> list[ListenerKey]:
        gone = [k for k, t in listeners.items() if now_ns - t.last_seen_ns > ttl_ns]
        for key in gone:
            del self.listeners[key]
        self.deleted += gone
        return gone

    def listeners_overflow(self) -> int:
        return 3


def _slots(**at: int) -> tuple[int, ...]:
    slots = [0] * LATENCY_SLOTS
    for name, count in at.items():
        slots[int(name[1:])] = count
    return tuple(slots)


def _scrape(sink: MetricsSink) -> dict[tuple[str, tuple], float]:
    sink.refresh()  # the main loop's tick: read the maps, publish; the scrape renders that
    text = generate_latest(sink.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _with_le(labels: tuple, le: str) -> tuple:
    return tuple(sorted(labels + (("le", le),)))


def _containers(cgroup_id: int) -> Optional[Container]:
    return {100: Container("a" * 64, "web", "web-0", "shop")}.get(cgroup_id)


def test_two_namespaces_are_two_series_with_exact_counts_and_log2_buckets() -> None:
    reader = FakeReader()
    now = [100 * SECOND]
    sink = MetricsSink(reader, container_of=_containers,  # type: ignore[arg-type]
                       clock_ns=lambda: now[0])
    reader.listeners = {
        A: ListenerTotals(accepts=3, latency_count=3, latency_sum_ns=3000,
                          latency_slots=_slots(s0=1, s3=1, s4=1), backlog=2, backlog_max=128,
                          last_seen_ns=now[0]),
        B: ListenerTotals(accepts=5, latency_count=5, latency_slots=_slots(s4=5),
                          backlog_max=64, last_seen_ns=now[0])}
    samples = _scrape(sink)
    a = (("container", "web"), ("laddr", "0.0.0.0"), ("lport", "80"), ("namespace", "shop"),
         ("netns", "1"), ("pod", "web-0"))
    b = (("container", ""), ("laddr", "0.0.0.0"), ("lport", "80"), ("namespace", ""),
         ("netns", "2"), ("pod", ""))
    assert samples[("tcpaccept_accepts_total", a)] == 3
    assert samples[("tcpaccept_accepts_total", b)] == 5
    # Slot k holds [2^(k-1), 2^k) us: slots 0 and 3 are under 8 us, slot 4 under 32 us.
    assert samples[("tcpaccept_queue_latency_seconds_bucket", _with_le(a, "8e-06"))] == 2
    assert samples[("tcpaccept_queue_latency_seconds_bucket", _with_le(a, "3.2e-05"))] == 3
    assert samples[("tcpaccept_queue_latency_seconds_count", a)] == 3
    assert samples[("tcpaccept_listen_backlog_max", b)] == 64
    assert samples[("tcpaccept_aggregation_overflow_total", (("map", "listener_stats"),))] == 3
    assert samples[("tcpaccept_lost_events_total", (("reason", "ring_buffer"),))] == 0


def test_labels_left_out_merge_listeners_and_comm_is_the_last_accepting_process() -> None:
    reader = FakeReader()
    sink = MetricsSink(reader, labels=("lport", "comm"),  # type: ignore[arg-type]
                       clock_ns=lambda: 10 * SECOND)
    reader.listeners = {A: ListenerTotals(accepts=3, backlog=1, last_seen_ns=9 * SECOND,
                                          comm="nginx"),
                        B: ListenerTotals(accepts=5, backlog=7, last_seen_ns=8 * SECOND,
                                          comm="nginx")}
    samples = _scrape(sink)
    assert samples[("tcpaccept_accepts_total", (("comm", "nginx"), ("lport", "80")))] == 8
    # The backlog of the listener that accepted last.
    assert samples[("tcpaccept_listen_backlog", (("comm", "nginx"), ("lport", "80")))] == 1


def test_idle_listeners_and_drops_expire_after_the_ttl() -> None:
    reader = FakeReader()
    now = [1000 * SECOND]
    sink = MetricsSink(reader, labels=("laddr", "lport"), ttl_s=60,  # type: ignore[arg-type]
                       clock_ns=lambda: now[0])
    reader.listeners = {A: ListenerTotals(accepts=1, last_seen_ns=now[0])}
    sink.handle([Drop(laddr="127.0.0.1", lport=81, family=4, pid=1, comm="x", backlog=1,
                      backlog_max=1, dropped=4, inode=1, netns=1)])
    sink.handle([Lost(2, "output stalled")])
    samples = _scrape(sink)
    drop_labels = (("laddr", "127.0.0.1"), ("lport", "81"))
    assert samples[("tcpaccept_listen_drops_total", drop_labels)] == 4
    assert samples[("tcpaccept_lost_events_total", (("reason", "output_stalled"),))] == 2
    now[0] += 61 * SECOND
    samples = _scrape(sink)
    assert reader.deleted == [A]
    assert not [k for k in samples if k[0] in ("tcpaccept_accepts_total",
                                                "tcpaccept_listen_drops_total")]


def _socket(inode: int, lport: int, netns: int = 1, pid: int = 10, dropped: int = 0,
            backlog: int = 0, backlog_max: int = 1, syn_queue: int = 0,
            comm: str = "hung") -> ListenerState:
    return ListenerState(inode, netns, 2, "127.0.0.1", lport, backlog, backlog_max, syn_queue,
                         dropped, pid, comm, 1, 0)


def _read(*sockets: ListenerState, reads: int = 1) -> SocketsRead:
    return SocketsRead(MappingProxyType({s.inode: s for s in sockets}), reads, 0.0, reads)


def _busy_sink(labels: tuple[str, ...], sockets: bool = False) -> MetricsSink:
    reader = FakeReader()
    now = 100 * SECOND
    sink = MetricsSink(reader, labels=labels, container_of=_containers,  # type: ignore[arg-type]
                       clock_ns=lambda: now)
    reader.listeners = {
        A: ListenerTotals(accepts=3, latency_count=3, latency_sum_ns=3_000_123,
                          latency_slots=_slots(s0=1, s3=1, s9=1), backlog=2, backlog_max=128,
                          last_seen_ns=now, comm='we"ird\\name'),
        B: ListenerTotals(accepts=12_345_678, latency_count=12_345_678,
                          latency_slots=_slots(s4=12_345_678), backlog_max=64,
                          last_seen_ns=now, comm="{x}")}
    sink.handle([Drop(laddr="127.0.0.1", lport=81, family=4, pid=1, comm="x", backlog=1,
                      backlog_max=1, dropped=4, inode=1, netns=1)])
    sink.handle([Lost(2, "output stalled"), Lost(5, "ring buffer")])
    if sockets:
        read = _read(_socket(7, 80, dropped=3, backlog=1, syn_queue=2, comm="{x}"),
                     _socket(8, 9000, netns=2, dropped=12_345_678, backlog_max=4096))
        sink.table.sockets_source = lambda: read
    sink.refresh()
    return sink


@pytest.mark.parametrize("sockets", [False, True])
@pytest.mark.parametrize("labels", [DEFAULT_LABELS, KNOWN_LABELS, ("comm", "lport"),
                                    ("pod",)])
def test_the_direct_exposition_is_byte_for_byte_what_prometheus_client_writes(
        labels: tuple[str, ...], sockets: bool) -> None:
    sink = _busy_sink(labels, sockets)
    assert sink.exposition(openmetrics=False) == generate_latest(sink.registry)
    assert sink.exposition(openmetrics=True) == openmetrics.generate_latest(sink.registry)


def test_the_fast_integer_format_is_floattogostring() -> None:
    from prometheus_client.utils import floatToGoString

    from tcpaccept.exposition import go_float
    for value in (0, 1, 7, 999_999, 1_000_000, 12_345_678, -5, 2**63, 0.5, 1e-06, 3.2e-05):
        assert go_float(value) == floatToGoString(value), value


def test_a_render_is_given_up_when_the_server_stops() -> None:
    from tcpaccept.exposition import Cancelled
    sink = _busy_sink(DEFAULT_LABELS)
    with pytest.raises(Cancelled):
        sink.exposition(openmetrics=False, cancelled=lambda: True)
    assert sink.exposition(openmetrics=False, cancelled=lambda: False)


def test_every_listening_socket_has_queue_series_and_drops_from_zero() -> None:
    """A listener that never accepted (a hung server) is exported from the first read that
    saw it, its drop counter at 0; the table's read (not the accepts) gives the queue;
    drops that arrive as items are the table's already and are not counted twice."""
    reader = FakeReader()
    now = 100 * SECOND
    sink = MetricsSink(reader, labels=("lport", "netns"),  # type: ignore[arg-type]
                       clock_ns=lambda: now)
    reader.listeners = {A: ListenerTotals(accepts=2, backlog=9, backlog_max=128,
                                          last_seen_ns=now)}
    read = [_read(_socket(1, 81), _socket(2, 80, backlog=3, backlog_max=5, syn_queue=1))]
    sink.table.sockets_source = lambda: read[0]
    hung, busy = (("lport", "81"), ("netns", "1")), (("lport", "80"), ("netns", "1"))
    samples = _scrape(sink)
    assert samples[("tcpaccept_listen_drops_total", hung)] == 0
    assert samples[("tcpaccept_listen_backlog_max", hung)] == 1
    assert ("tcpaccept_accepts_total", hung) not in samples
    assert [samples[(name, busy)] for name in (
        "tcpaccept_accepts_total", "tcpaccept_listen_backlog", "tcpaccept_listen_backlog_max",
        "tcpaccept_listen_syn_queue", "tcpaccept_listen_drops_total")] == [2, 3, 5, 1, 0]
    read[0] = _read(_socket(1, 81, dropped=40, backlog=1, syn_queue=1), _socket(2, 80),
                    reads=2)
    sink.handle([Drop(laddr="127.0.0.1", lport=81, family=4, pid=10, comm="hung", backlog=1,
                      backlog_max=1, dropped=40, inode=1, netns=1)])
    samples = _scrape(sink)
    assert samples[("tcpaccept_listen_drops_total", hung)] == 40
    assert samples[("tcpaccept_listen_syn_queue", hung)] == 1
    read[0] = _read(_socket(2, 80), reads=3)  # the hung server closed: its series go
    samples = _scrape(sink)
    assert not [k for k in samples if k[1] == hung]


def test_sockets_of_one_label_set_add_up_and_filters_and_owners_apply() -> None:
    reader = FakeReader()
    sink = MetricsSink(reader, labels=("lport", "container"))  # type: ignore[arg-type]
    owners: list[int] = []

    def owner(pid: int) -> Optional[Container]:
        owners.append(pid)
        return Container("b" * 64, "api", None, None) if pid == 10 else None

    sink.table.owner_container = owner
    sink.table.socket_wanted = lambda state, container: state.pid != 99
    read = _read(_socket(1, 80, netns=1, dropped=2, backlog_max=4),
                 _socket(2, 80, netns=2, dropped=3, backlog_max=4),  # SO_REUSEPORT, netns
                 _socket(3, 80, pid=11), _socket(4, 443, pid=99))  # 99: filtered out
    sink.table.sockets_source = lambda: read
    samples = _scrape(sink)
    api, none = (("container", "api"), ("lport", "80")), (("container", ""), ("lport", "80"))
    assert samples[("tcpaccept_listen_drops_total", api)] == 5
    assert samples[("tcpaccept_listen_backlog_max", api)] == 8
    assert samples[("tcpaccept_listen_drops_total", none)] == 0
    assert not [k for k in samples if ("lport", "443") in k[1]]
    first = sink.state.listeners.sockets
    _scrape(sink)  # the watch has not read anew: the same rows, no owner looked up again
    assert sink.state.listeners.sockets is first and sorted(owners) == [10, 10, 11, 99]
