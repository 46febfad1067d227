"""--cgroup follows its path: systemd restarts a service by removing its cgroup directory and
making a new one under the same name. The filter held the old cgroup and matched nothing
after that (0 of 5 accepts seen, no warning); now it re-points within a second and says so."""

from __future__ import annotations

import os
import time

import pytest

from tests.support.containers import cgroup2_mount, rmdir_when_empty
from tests.support.servers import connect, start_server
from tests.support.tracer import start_tracer

pytestmark = pytest.mark.method_agnostic  # cgroup bookkeeping


def _move_into(directory: str, pid: int) -> None:
    with open(os.path.join(directory, "cgroup.procs"), "w") as procs:
        procs.write(str(pid))


def _accepts(server, count: int) -> None:
    clients = [connect("127.0.0.1", server.port) for _ in range(count)]
    server.accept(count)
    for client in clients:
        client.close()


def test_cgroup_filter_follows_a_recreated_directory() -> None:
    directory = os.path.join(cgroup2_mount(), f"tcpaccept-follow-{os.getpid()}")
    os.mkdir(directory)
    run = None
    try:
        with start_server(comm="svc-before") as before:
            _move_into(directory, before.pid)
            run = start_tracer("--cgroup", directory)
            _accepts(before, 2)
        rmdir_when_empty(directory)  # the service stops: its cgroup goes
        time.sleep(1.5)
        os.mkdir(directory)  # and comes back under the same path
        with start_server(comm="svc-after") as after:
            _move_into(directory, after.pid)
            time.sleep(1.5)  # the filter is re-pointed within a second
            _accepts(after, 5)
            run.stop()
    finally:
        if run is not None:
            run.stop()
        rmdir_when_empty(directory)
    assert len(run.events([before.pid])) == 2  # the positive control
    assert len(run.events([after.pid])) == 5
    warnings = [line for line in run.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"tcpaccept: warning: --cgroup {directory} is gone; nothing matches until it is back",
        f"tcpaccept: warning: --cgroup {directory} was replaced; following the new directory",
    ]
