"""A real Prometheus scrapes a real tcpaccept during real traffic: every dashboard panel's
query (variables substituted) returns data, and the drop alert goes off for the listener
that really overflowed.

Prometheus is Debian's /usr/bin/prometheus, started here on a loopback port with a temporary
data directory (never the system service), with deploy/prometheus/prometheus.yml and its
rules, only the target, the file paths and a 1 s interval changed. tcpaccept runs with the
DaemonSet's arguments (listen address and host root swapped for the host's).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.fleet.deployment import DASHBOARD, PROMETHEUS, VENV_BIN, agent_args, scrape
from tests.support.child import Child, free_port
from tests.support.servers import connect, start_server

SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "15s"  # what Grafana's $__rate_interval would be at a 1 s scrape and zoom-in


def prometheus_config(target: str, work: Path) -> Path:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
    config["rule_files"] = [str(PROMETHEUS / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class PrometheusApi:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"

    def get(self, path: str, **params: str) -> object:
        query = urllib.parse.urlencode(params, doseq=True)
        body = json.loads(scrape(f"{self.base}/{path}?{query}", timeout=10))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list:
        data = self.get("query", query=expr)
        return data["result"]  # type: ignore[index]


@pytest.fixture
def agent_port() -> Iterator[int]:
    assert os.geteuid() == 0, "needs root (BPF)"
    port = free_port()
    argv = [str(VENV_BIN / "tcpaccept"), *agent_args(f"127.0.0.1:{port}", "/")]
    agent = Child(argv, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert agent.proc.poll() is None, f"tcpaccept exited: {agent.text('stderr')}"
            try:
                scrape(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "tcpaccept metrics never came up"
                time.sleep(0.1)
        yield port
    finally:
        agent.stop()


@pytest.fixture
def prometheus(agent_port: int, tmp_path: Path) -> Iterator[PrometheusApi]:
    binary = "/usr/bin/prometheus"
    assert os.access(binary, os.X_OK), "Debian's prometheus missing: scripts/setup.sh --test"
    port = free_port()
    config = prometheus_config(f"127.0.0.1:{agent_port}", tmp_path)
    server = Child([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                   stdout=subprocess.DEVNULL)
    try:
        api = PrometheusApi(port)
        deadline = time.monotonic() + 60
        while True:
            assert server.proc.poll() is None, f"prometheus exited: {server.text('stderr')}"
            try:
                if api.query('up{job="tcpaccept"} == 1'):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus never scraped tcpaccept"
            time.sleep(0.2)
        yield api
    finally:
        server.stop()


class Traffic:
    """Connections accepted by a Python server, and a backlog-1 listener that never accepts
    and is flooded now and then (each flood: the kernel refuses all but 2 connects)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.accepted = 0
        self.server = start_server(comm="fleet-server")
        self.full = socket.socket()
        self.full.bind(("127.0.0.1", 0))
        self.full.listen(1)
        self.full_port = self.full.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _flood(self) -> None:
        clients = []
        for _ in range(12):
            client = socket.socket()
            client.setblocking(False)
            assert client.connect_ex(("127.0.0.1", self.full_port)) in (0, errno.EINPROGRESS)
            clients.append(client)
        time.sleep(0.05)
        for client in clients:
            client.close()

    def _run(self) -> None:
        while not self.stop.is_set():
            for _ in range(5):
                client = connect("127.0.0.1", self.server.port)
                self.server.accept(1)
                client.close()
                self.accepted += 1
            self._flood()
            time.sleep(0.2)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        self.server.close()
        self.full.close()


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(f"{panel['title']} [{target['refId']}]", target["expr"])
            for panel in dashboard["panels"] for target in panel["targets"]]


def substitute(expr: str, node: str) -> str:
    # $node: the value the node variable offers; namespace and container: "All" (".*",
    # the variables' allValue): host processes have empty namespace/container labels.
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$node", node)
            .replace("$namespace", ".*").replace("$container", ".*"))


def test_every_dashboard_panel_has_data(prometheus: PrometheusApi) -> None:
    with Traffic() as traffic:
        both_seen = (
            f'rate(tcpaccept_listen_drops_total{{lport="{traffic.full_port}"}}[{RATE_INTERVAL}])'
            f' > 0 and on() rate(tcpaccept_accepts_total{{lport="{traffic.server.port}"}}'
            f'[{RATE_INTERVAL}]) > 0')
        deadline = time.monotonic() + 60
        while not prometheus.query(both_seen):
            assert time.monotonic() < deadline, (
                "no accepts and drops of the test listeners in Prometheus; series of them: "
                + json.dumps(prometheus.query(
                    f'{{__name__=~"tcpaccept_.*", lport=~"{traffic.server.port}|'
                    f'{traffic.full_port}"}}')))
            time.sleep(0.5)
        # The node variable, as Grafana fills it: the `node` label set by the scrape config.
        nodes = prometheus.get("label/node/values", **{"match[]": "tcpaccept_accepts_total"})
        assert nodes == ["127.0.0.1"]
        empty = [name for name, expr in dashboard_queries()
                 if not prometheus.query(substitute(expr, "127.0.0.1"))]
        assert not empty, f"dashboard panels without data: {empty}"
        assert traffic.accepted > 0


def test_drop_alert_goes_off_for_the_overflowing_listener(prometheus: PrometheusApi) -> None:
    with Traffic() as traffic:
        deadline = time.monotonic() + 60
        while True:
            alerts = [a for a in prometheus.get("alerts")["alerts"]  # type: ignore[index]
                      if a["labels"]["alertname"] == "TcpacceptListenerDropping"]
            if alerts:
                break
            assert time.monotonic() < deadline, "TcpacceptListenerDropping never went off"
            time.sleep(0.5)
        # Only the listener that overflowed (the accepting server never drops).
        assert {a["labels"]["lport"] for a in alerts} == {str(traffic.full_port)}
        assert {a["state"] for a in alerts} <= {"pending", "firing"}
