"""deploy/prometheus: promtool accepts the scrape config and the rules, and the rules' unit
tests (input series -> expected alerts, deploy/prometheus/tcpaccept-rules.test.yml) pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.fleet.deployment import PROMETHEUS


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: bash scripts/setup.sh --test installs Debian's prometheus"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_scrape_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", "tcpaccept-rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", "tcpaccept-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    # Negative control: the same unit tests against a rule whose threshold never trips.
    rules = (PROMETHEUS / "tcpaccept-rules.yml").read_text()
    assert ") > 0.1" in rules
    (tmp_path / "tcpaccept-rules.yml").write_text(rules.replace(") > 0.1", ") > 10"))
    shutil.copy(PROMETHEUS / "tcpaccept-rules.test.yml", tmp_path)
    result = promtool("test", "rules", "tcpaccept-rules.test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "TcpacceptQueueLatencyHigh" in result.stdout + result.stderr
