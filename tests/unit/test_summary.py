"""Summary mode's arithmetic, without a kernel."""

from __future__ import annotations

import io
import json

from tcpaccept.model import Accept, Lost
from tcpaccept.sink import LostNotices
from tcpaccept.summary import Log2Histogram, SummarySink, percentile


def _accept(raddr: str, lport: int) -> Accept:
    return Accept(time_ns=0, pid=7, tid=7, uid=0, comm="srv", family=4, raddr=raddr,
                  rport=1000, laddr="127.0.0.1", lport=lport, backlog=1, backlog_max=8,
                  fd=5, listen_fd=3, netns=1, cgroup_id=1, queue_latency_ns=2_000_000,
                  probe="tracepoint")


def test_percentile_is_nearest_rank() -> None:
    values = [100.0, 200.0, 300.0, 400.0]
    assert percentile(values, 0.5) == 200.0
    assert percentile(values, 0.99) == 400.0
    assert percentile([], 0.5) is None


def test_log2_histogram_buckets_like_bcc() -> None:
    h = Log2Histogram()
    for value in (0, 1, 2, 3, 100, 100, 1000):
        h.add(value)
    assert h.rows()[:4] == [(0, 0, 1), (1, 1, 1), (2, 3, 2), (4, 7, 0)]
    assert (64, 127, 2) in h.rows() and h.rows()[-1] == (512, 1023, 1)


def test_summary_json_counts_listeners_and_remotes() -> None:
    out, err = io.StringIO(), io.StringIO()
    sink = SummarySink(out, interval=60, as_json=True, notices=LostNotices(err))
    for remote, port in (("10.0.0.1", 80), ("10.0.0.1", 80), ("10.0.0.2", 443)):
        sink.handle([_accept(remote, port)])
    sink.handle([Lost(3)])
    sink.close()
    assert err.getvalue() == "Lost 3 events\nLost 3 events in total\n"
    objects = [json.loads(line) for line in out.getvalue().splitlines()]
    summary = objects[0]
    assert [(r["lport"], r["accepts"]) for r in summary["listeners"]] == [(80, 2), (443, 1)]
    assert summary["listeners"][0]["queue_latency_p50_us"] == 2000.0
    assert summary["top_remotes"] == [{"raddr": "10.0.0.1", "accepts": 2},
                                      {"raddr": "10.0.0.2", "accepts": 1}]
    assert [o["event"] for o in objects[1:]] == ["histogram", "histogram"]
