"""The metrics collector's merge, labels, buckets and expiry, on synthetic map reads."""

from __future__ import annotations

from typing import Optional

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from tcpaccept.aggregate import LATENCY_SLOTS, ListenerKey, ListenerTotals
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


def _busy_sink(labels: tuple[str, ...]) -> MetricsSink:
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
    sink.refresh()
    return sink


@pytest.mark.parametrize("labels", [DEFAULT_LABELS, KNOWN_LABELS, ("comm", "lport"),
                                    ("pod",)])
def test_the_direct_exposition_is_byte_for_byte_what_prometheus_client_writes(
        labels: tuple[str, ...]) -> None:
    sink = _busy_sink(labels)
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
