"""The command line as a user meets it: output that parses, errors that are one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.support.servers import connect, start_server
from tests.support.tracer import start_tracer, tcpaccept_command

pytestmark = pytest.mark.method_agnostic

JSON_KEYS = {"event", "time", "pid", "tid", "comm", "family", "raddr", "rport", "laddr",
             "lport", "backlog", "backlog_max", "fd", "listen_fd", "uid", "netns", "cgroup_id",
             "queue_latency_us", "container_id", "container", "pod", "namespace"}


def test_json_mode_prints_only_json_on_stdout() -> None:
    with start_server() as server:
        run = start_tracer()
        clients = [connect("127.0.0.1", server.port) for _ in range(3)]
        server.accept(3)
        run.stop()
    objects = [json.loads(line) for line in run.lines]  # every stdout line is JSON
    objects = [o for o in objects if o["pid"] == server.pid]
    assert len(objects) == 3
    for obj in objects:
        assert set(obj) == JSON_KEYS, obj
        assert obj["time"][10] == "T" and obj["time"][19] == "."  # ISO 8601, microseconds
    assert "Tracing TCP accepts" in run.stderr
    for c in clients:
        c.close()


def test_unknown_flag_is_one_line_and_exit_2() -> None:
    proc = subprocess.run(tcpaccept_command("--no-such-flag"), capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "--no-such-flag" in proc.stderr


def test_unprivileged_user_gets_the_privilege_error() -> None:
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
           "--inh-caps=-all", "--bounding-set=-all", *tcpaccept_command()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "tcpaccept: tcpaccept needs CAP_BPF and CAP_PERFMON to load and attach its BPF "
        "programs; missing: CAP_BPF and CAP_PERFMON (run as root, or grant them"), lines


def test_closed_stdout_exits_quietly() -> None:
    with start_server() as server:
        # The pipeline's status is tcpaccept's own, not head's.
        tracer = subprocess.Popen(
            ["bash", "-c", f"{' '.join(tcpaccept_command())} | head -1; exit ${{PIPESTATUS[0]}}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        # head -1 takes the banner and exits; the next write gets EPIPE.
        assert tracer.stdout is not None
        assert tracer.stdout.readline().strip() == "Tracing TCP accepts. Hit Ctrl-C to end."
        time.sleep(1.0)
        clients = [connect("127.0.0.1", server.port) for _ in range(2)]
        server.accept(2)
        out, err = tracer.communicate(timeout=20)
        assert tracer.returncode == 0
        assert err == ""
        for c in clients:
            c.close()


def test_module_and_console_script_agree() -> None:
    proc = subprocess.run([sys.executable, "-m", "tcpaccept.cli", "--version"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("tcpaccept ")
