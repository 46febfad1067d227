"""Issue 17 item 6: losses of a stalled output reach tcpaccept_lost_events_total
{reason="output_stalled"}, not only stderr. A real tracer prints JSON lines into a pipe the
test never reads, under a real accept load, with --metrics on."""

from __future__ import annotations

import os
import signal

import pytest

from tests.kernel.test_hardening import STALLED, accept_load, wait_for
from tests.support.accept_load import samples, scrape
from tests.support.child import free_port
from tests.support.tracer import start_tracer

# Sustained accept load against a stalled reader, with --metrics.
pytestmark = [pytest.mark.host_only]


def test_output_stalls_are_exported_as_lost_events() -> None:
    read_end, write_end = os.pipe()  # never read: the pipe, then the writer's buffer fill
    metrics_port = free_port()
    with accept_load() as port:
        tracer = start_tracer("-P", str(port), "--metrics", f"127.0.0.1:{metrics_port}",
                              stdout=write_end)
        os.close(write_end)
        try:
            assert wait_for(lambda: STALLED.search(tracer.stderr) is not None, 30), \
                tracer.stderr
            reported_before = sum(map(int, STALLED.findall(tracer.stderr)))
            body = scrape(metrics_port)
        finally:
            tracer.stop(signal.SIGTERM)  # its last notices (at most one a second) said at exit
            os.close(read_end)
    ((_, exported),) = samples(body, "tcpaccept_lost_events_total", reason="output_stalled")
    reported = sum(map(int, STALLED.findall(tracer.stderr)))
    # Counted for the metrics just before stderr says it: between the two reads.
    assert 0 < reported_before <= exported <= reported, (reported_before, exported, reported)
