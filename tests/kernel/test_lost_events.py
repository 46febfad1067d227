"""No silent loss: when the ring buffer overflows, the kernel counts it and we say so."""

from __future__ import annotations

import re
import signal
import time

from tests.support.servers import connect, start_server
from tests.support.tracer import start_tracer

ACCEPTS = 300


def test_overflowing_ring_buffer_is_reported_and_adds_up() -> None:
    with start_server(backlog=512) as server:
        # A 4 KiB ring holds ~35 events; the tracer is frozen while 300 accepts happen.
        run = start_tracer("--ring-buffer", "4", "-p", str(server.pid))
        run.proc.send_signal(signal.SIGSTOP)
        clients = [connect("127.0.0.1", server.port) for _ in range(ACCEPTS)]
        server.accept(ACCEPTS)
        run.proc.send_signal(signal.SIGCONT)
        time.sleep(1.5)  # a lost-event check happens at least once a second
        run.stop()
        for c in clients:
            c.close()
    printed = len(run.events([server.pid]))
    while_running = [int(n) for n in re.findall(r"^Lost (\d+) events$", run.stderr, re.M)]
    (total,) = [int(n) for n in re.findall(r"^Lost (\d+) events in total$", run.stderr, re.M)]
    assert 0 < printed < ACCEPTS
    assert total == ACCEPTS - printed  # every accept is either printed or counted
    assert sum(while_running) == total and while_running, run.stderr
