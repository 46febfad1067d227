"""The DaemonSet's probe path and listen address: a real agent started with the DaemonSet's
own arguments (`--metrics [::]:PORT`, only the port swapped) answers /healthz and /metrics on
127.0.0.1 and on ::1 (its 503 when the main loop stops ticking:
tests/unit/test_metrics_endpoint.py)."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from typing import Iterator

import pytest

from tests.fleet.deployment import VENV_BIN, agent_args, agent_container, scrape
from tests.support.child import Child, free_port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def agent_port() -> Iterator[int]:
    assert os.geteuid() == 0, "needs root (BPF)"
    port = free_port()
    address = agent_container()["args"][agent_container()["args"].index("--metrics") + 1]
    assert address.startswith("[::]:")
    argv = [str(VENV_BIN / "tcpaccept"), *agent_args(f"[::]:{port}", "/")]
    agent = Child(argv, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert agent.proc.poll() is None, f"tcpaccept exited: {agent.text('stderr')}"
            try:
                scrape(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "tcpaccept never answered /healthz"
                time.sleep(0.1)
        yield port
    finally:
        agent.stop()


def test_daemonset_address_answers_on_ipv4_and_ipv6(agent_port: int) -> None:
    for host in ("127.0.0.1", "[::1]"):
        assert get(f"http://{host}:{agent_port}/healthz") == (200, "ok\n"), host
        status, body = get(f"http://{host}:{agent_port}/metrics")
        assert status == 200 and "tcpaccept_aggregation_overflow_total" in body, host
