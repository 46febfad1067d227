"""The session owns every resource and turns failures into one line: a metrics port that is
taken stops the start cleanly; a drop monitor that fails mid-run warns once and tracing goes
on (real tracer, real accepts; only the drop monitor's failure is injected)."""

from __future__ import annotations

import socket
import subprocess
import threading

import pytest

from tcpaccept.config import Config
from tcpaccept.drops import DropMonitorError
from tcpaccept.model import Accept, Drop, Lost
from tcpaccept.run import StopFlag, run
from tcpaccept.tracer import Tracer
from tests.support.servers import connect, start_server
from tests.support.tracer import PROBE, tcpaccept_command

pytestmark = pytest.mark.method_agnostic  # the session, not the attach method


def test_metrics_port_taken_is_one_line_and_exit_1() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        proc = subprocess.run(tcpaccept_command("--metrics", f"127.0.0.1:{port}", "-d", "5"),
                              capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"tcpaccept: --metrics 127.0.0.1:{port}: cannot listen: Address already in use"]
    assert "Traceback" not in proc.stderr


class FailingDrops:
    """A drop source whose sampling fails from its second poll on, then recovers."""

    poll_interval_s = 1.0

    def __init__(self) -> None:
        self.polls = 0
        self.calls: list[str] = []  # "poll" or "flush", in order

    def poll(self, kind: str = "poll") -> list[Drop]:
        self.polls += 1
        self.calls.append(kind)
        if 2 <= self.polls <= 3:
            raise DropMonitorError("sock_diag receive failed: Connection reset by peer")
        return []

    def flush(self) -> list[Drop]:
        return self.poll("flush")

    def warnings(self) -> list[str]:
        return []


class Collect:
    def __init__(self) -> None:
        self.accepts: list[Accept] = []
        self.lost: list[Lost] = []
        self.closed = False

    def handle(self, items) -> None:
        for item in items:
            if isinstance(item, Accept):
                self.accepts.append(item)
            elif isinstance(item, Lost):
                self.lost.append(item)

    def tick(self, now: float) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_drop_monitor_failing_mid_run_warns_once_and_tracing_goes_on() -> None:
    warnings: list[str] = []
    sink = Collect()
    drops = FailingDrops()
    with start_server() as server, Tracer(Config(probe=PROBE)) as tracer:
        decoder = tracer.decoder()
        stop = StopFlag()

        def traffic() -> None:
            # Accepts before, during and after the monitor's outage (polls 2-3, ~1 s apart).
            for _ in range(5):
                client = connect("127.0.0.1", server.port)
                server.accept(1)
                client.close()
                threading.Event().wait(0.8)

        driver = threading.Thread(target=traffic)
        driver.start()
        run(tracer, decoder.decode, sink, stop, warnings.append, duration=5.5, drops=drops)
        driver.join()
    mine = [a for a in sink.accepts if a.pid == server.pid]
    assert len(mine) == 5  # the positive control: tracing never stopped
    # Polled once a second (DROPS_POLL_S) through the outage, then flushed once: 5 polls fit
    # in 5.5 s, a busy machine's late wake-ups may leave 4, the fewest "works again" needs.
    assert drops.calls in (["poll"] * 4 + ["flush"], ["poll"] * 5 + ["flush"]), drops.calls
    assert warnings == [
        "listener drops: sock_diag receive failed: Connection reset by peer (retrying every 1 s)",
        "listener drops: sampling works again",
    ]
