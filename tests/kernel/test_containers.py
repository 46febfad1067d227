"""tcpaccept with real podman containers: two containers, each in its own network namespace,
each serving on 127.0.0.1:8080 (busybox httpd), traffic sent inside each namespace.

What a user of containers needs: every JSON event names its container (id and name), -x
shows the name, and --container NAME sees only that container's accepts, also for a
container started after tracing began (the kernel-side cgroup filter is re-resolved every
second)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from typing import Iterator

import pytest

from tests.support.child import free_port
from tests.support.containers import Podman, RunningContainer, connect_in_netns, unique_name
from tests.support.netns import NetNamespace
from tests.support.tracer import TracerRun, start_tracer, tcpaccept_command

pytestmark = pytest.mark.host_only  # podman

HTTPD_BACKLOG = 9  # busybox httpd's listen(): its queue holds one more


@pytest.fixture
def podman() -> Iterator[Podman]:
    with Podman() as runtime:
        yield runtime


def wait_for(what: str, done, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def accepts_of(run: TracerRun, container: RunningContainer) -> list[dict]:
    return [e for e in run.events() if e["pid"] == container.pid and e["lport"] == 8080]


def test_json_names_each_container_and_extended_text_shows_names(podman: Podman) -> None:
    first = podman.run(unique_name("web-a"))
    second = podman.run(unique_name("web-b"))
    json_run = start_tracer()
    text_run = start_tracer("-x", json_mode=False)
    try:
        connect_in_netns(first.pid, count=3)
        connect_in_netns(second.pid, count=5)
        wait_for("8 accepts", lambda: len(accepts_of(json_run, first)) == 3
                 and len(accepts_of(json_run, second)) == 5)
    finally:
        json_run.stop()
        text_run.stop()
    for container, count in ((first, 3), (second, 5)):
        events = accepts_of(json_run, container)
        assert len(events) == count
        for e in events:
            assert e["container_id"] == container.id
            assert e["container"] == container.name
            assert e["pod"] is None and e["namespace"] is None
            assert e["laddr"] == "127.0.0.1" and e["raddr"] == "127.0.0.1"
    # Two listeners on the same address and port, told apart by their network namespace.
    both = accepts_of(json_run, first) + accepts_of(json_run, second)
    assert len({e["netns"] for e in both}) == 2
    lines = [line for line in text_run.lines if not line.startswith("Tracing")]
    header = lines[0].split()
    column = header.index("CONTAINER")
    rows = [line.split() for line in lines[1:]]
    for container, count in ((first, 3), (second, 5)):
        mine = [row for row in rows if row[1] == str(container.pid) and row[6] == "8080"]
        assert len(mine) == count, text_run.stdout
        # Column index in the row equals the header's (+0: every column before it is a
        # single word in both, TIME included).
        assert {row[column] for row in mine} == {container.name}


def test_container_filter_sees_only_that_container_even_started_later(podman: Podman) -> None:
    other = podman.run(unique_name("other"))
    wanted_name = unique_name("wanted")
    run = start_tracer("--container", wanted_name)
    try:
        connect_in_netns(other.pid, count=2)
        wanted = podman.run(wanted_name)  # started after tracing began
        time.sleep(1.5)  # the filter's cgroups are re-resolved every second
        connect_in_netns(wanted.pid, count=3)
        connect_in_netns(other.pid, count=2)
        wait_for("3 accepts of the wanted container", lambda: len(accepts_of(run, wanted)) == 3)
    finally:
        run.stop()
    assert len(accepts_of(run, wanted)) == 3  # the positive control
    assert accepts_of(run, other) == []
    assert {e["container"] for e in run.events()} == {wanted_name}


def test_bad_container_filter_is_one_line_and_exit_2() -> None:
    proc = subprocess.run(tcpaccept_command("--container", "no/such name"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "--container" in proc.stderr


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_keep_two_containers_on_the_same_address_and_port_apart(
        podman: Podman) -> None:
    first = podman.run(unique_name("metrics-a"))
    second = podman.run(unique_name("metrics-b"))
    port = free_port()
    run = start_tracer("--metrics", f"127.0.0.1:{port}", "--quiet")
    try:
        connect_in_netns(first.pid, count=3)
        connect_in_netns(second.pid, count=5)
        time.sleep(0.5)
        samples = _scrape(port)
    finally:
        run.stop()
    accepts = {dict(labels)["container"]: value for (name, labels), value in samples.items()
               if name == "tcpaccept_accepts_total" and dict(labels)["lport"] == "8080"}
    # Two listeners, 127.0.0.1:8080 each, in two namespaces: two series, exact counts
    # (they were one merged series of 8 before).
    assert accepts == {first.name: 3.0, second.name: 5.0}
    netns = {dict(labels)["netns"] for (name, labels), _ in samples.items()
             if name == "tcpaccept_accepts_total" and dict(labels)["lport"] == "8080"}
    assert len(netns) == 2


def test_drop_rows_name_the_container_and_its_namespace(podman: Podman) -> None:
    web = podman.run(unique_name("flooded"))
    namespace = NetNamespace.of_process(web.pid)
    connect_in_netns(web.pid)  # listening
    run = start_tracer("--drops", "-P", "8080")
    os.kill(web.pid, signal.SIGSTOP)  # accepts nothing: the queue fills, then SYNs are refused
    try:
        overflows = namespace.flood(8080, 30, backlog=HTTPD_BACKLOG)
    finally:
        os.kill(web.pid, signal.SIGCONT)
        run.stop()
    drops = [o for o in map(json.loads, run.lines) if o["event"] == "drop"]
    assert overflows == 30 - (HTTPD_BACKLOG + 1)  # the positive control
    assert sum(d["dropped"] for d in drops) == overflows
    for d in drops:
        assert (d["netns"], d["lport"], d["pid"]) == (namespace.inode, 8080, web.pid)
        assert (d["container_id"], d["container"]) == (web.id, web.name)
