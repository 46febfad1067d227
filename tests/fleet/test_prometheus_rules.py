"""deploy/prometheus: promtool accepts the scrape config and the rules, and the rules' unit
tests (input series -> expected alerts, deploy/prometheus/tcpaccept-rules.test.yml, with the
agent's own histogram bucket edges) pass; each negative control shows what a test catches."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tcpaccept.exposition import BUCKETS
from tests.fleet.deployment import PROMETHEUS

RULES = "tcpaccept-rules.yml"
TESTS = "tcpaccept-rules.test.yml"


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: bash scripts/setup.sh --test installs Debian's prometheus"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_scrape_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_tests_use_the_agents_bucket_edges() -> None:
    tests = (PROMETHEUS / TESTS).read_text()
    edges = set(re.findall(r'tcpaccept_queue_latency_seconds_bucket\{[^}]*le="([^"]+)"', tests))
    assert edges == {le for le, _ in BUCKETS} | {"+Inf"}
    rules = (PROMETHEUS / RULES).read_text()
    (edge,) = set(re.findall(r'le="([^"+]+)"', rules))
    assert edge in {le for le, _ in BUCKETS}, f"the latency alert's edge {edge} is no bucket edge"


def unit_tests_with(tmp_path: Path, old: str, new: str) -> subprocess.CompletedProcess:
    rules = (PROMETHEUS / RULES).read_text()
    assert old in rules
    return unit_tests_of(tmp_path, rules.replace(old, new))


def unit_tests_of(tmp_path: Path, rules: str) -> subprocess.CompletedProcess:
    (tmp_path / RULES).write_text(rules)
    shutil.copy(PROMETHEUS / TESTS, tmp_path)
    return promtool("test", "rules", TESTS, cwd=tmp_path)


def test_rule_unit_tests_catch_a_latency_threshold_that_never_trips(tmp_path: Path) -> None:
    result = unit_tests_with(tmp_path, "> 0.01\n", "> 10\n")
    assert result.returncode != 0
    assert "TcpacceptQueueLatencyHigh" in result.stdout + result.stderr


def test_rule_unit_tests_catch_an_interpolated_p99(tmp_path: Path) -> None:
    # The previous rule, p99 by histogram_quantile > 100 ms: it fires for the 40 ms listener.
    rules = yaml.safe_load((PROMETHEUS / RULES).read_text())
    (latency,) = [r for r in rules["groups"][0]["rules"]
                  if r.get("alert") == "TcpacceptQueueLatencyHigh"]
    latency["expr"] = ("histogram_quantile(0.99, sum by (le, node, laddr, lport, netns, "
                       "container, namespace, pod) (rate(tcpaccept_queue_latency_seconds_bucket"
                       "[5m]))) > 0.1")
    result = unit_tests_of(tmp_path, yaml.safe_dump(rules))
    assert result.returncode != 0
    assert 'lport="8443"' in result.stdout + result.stderr  # the 40 ms listener


def test_rule_unit_tests_catch_a_drop_alert_blind_to_first_bursts(tmp_path: Path) -> None:
    result = unit_tests_with(tmp_path, """          or
          sum by (node, laddr, lport, netns, container, namespace, pod) (
            tcpaccept_listen_drops_total unless tcpaccept_listen_drops_total offset 5m
          ) > 0
""", "")
    assert result.returncode != 0
    assert "TcpacceptListenerDropping" in result.stdout + result.stderr
    assert 'lport="7070"' in result.stdout + result.stderr  # the burst it missed


def test_rule_unit_tests_catch_an_agent_down_rule_of_job_names_only(tmp_path: Path) -> None:
    rules = (PROMETHEUS / RULES).read_text()
    by_name = '          up{job=~"(.+/)?tcpaccept"} == 0\n'
    start = rules.index(by_name)
    end = rules.index("        for: 5m", start)
    result = unit_tests_with(tmp_path, rules[start:end], by_name)
    assert result.returncode != 0
    assert 'job="kubernetes-pods"' in result.stdout + result.stderr
