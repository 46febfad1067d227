"""The run plan (issue 17 item 5): derived once from the flags, read by the CLI and the
session."""

from __future__ import annotations

from tcpaccept.cli import build_parser, configs_from
from tcpaccept.plan import DropPolicy, RunPlan


def plan(*argv: str) -> RunPlan:
    config, output = configs_from(build_parser().parse_args(list(argv)))
    return RunPlan.of(output, config)


def test_lines_only_send_records_and_aggregate_nothing() -> None:
    p = plan()
    assert (p.aggregate, p.emit_records, p.queue_latency, p.drops) == \
        (False, True, False, DropPolicy.NONE)
    assert not p.resolve_containers


def test_the_metrics_agent_counts_in_the_kernel_only_and_drops_are_best_effort() -> None:
    p = plan("--metrics", "9435", "--quiet")
    assert (p.aggregate, p.emit_records, p.aggregate_remotes, p.metrics) == \
        (True, False, False, True)
    assert p.drops is DropPolicy.BEST_EFFORT and p.queue_latency
    assert p.resolve_containers  # the default labels name containers
    assert not plan("--metrics", "9435", "-q", "--metrics-labels", "lport").resolve_containers


def test_summary_reads_remotes_requires_drops_and_prints_no_records_unless_counted() -> None:
    p = plan("-s", "5")
    assert (p.aggregate, p.emit_records, p.aggregate_remotes, p.drops) == \
        (True, False, True, DropPolicy.REQUIRED)
    assert plan("-s", "5", "-n", "3").emit_records


def test_lines_with_metrics_send_records_and_count_them() -> None:
    p = plan("--metrics", "9435", "--drops")
    assert (p.aggregate, p.emit_records, p.drops) == (True, True, DropPolicy.REQUIRED)


def test_the_cli_asks_the_kernel_for_queue_latency_from_the_plan() -> None:
    for argv in ((), ("-l",), ("-j",), ("-s", "5"), ("--metrics", "9435")):
        config, output = configs_from(build_parser().parse_args(list(argv)))
        assert config.queue_latency == RunPlan.of(output).queue_latency == bool(argv)
