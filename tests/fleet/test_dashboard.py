"""deploy/grafana/tcpaccept.json, statically: the panels and variables the issue asks for,
each query filtered by the variables (test_prometheus_live.py runs them for real)."""

from __future__ import annotations

import json
import re

from tests.fleet.deployment import DASHBOARD

METRICS = {"tcpaccept_accepts_total", "tcpaccept_queue_latency_seconds_bucket",
           "tcpaccept_listen_backlog", "tcpaccept_listen_backlog_max",
           "tcpaccept_listen_syn_queue", "tcpaccept_listen_drops_total",
           "tcpaccept_lost_events_total"}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_variables_node_namespace_container() -> None:
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for name in ("node", "namespace", "container"):
        variable = variables[name]
        assert variable["includeAll"] and variable["multi"]
        assert variable["allValue"] == ".*"  # "All" must match the empty label too
        assert variable["query"]["query"].startswith("label_values(")


def test_panels_cover_every_metric_with_variable_filters() -> None:
    panels = load()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    # One heatmap: the queue-latency buckets of every selected listener, summed by le.
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert [re.findall(r"tcpaccept_[a-z_]+|sum by \([a-z, ]+\)", t["expr"])
            for p in heatmaps for t in p["targets"]] == \
        [["sum by (le)", "tcpaccept_queue_latency_seconds_bucket"]], heatmaps
    used = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            expr = target["expr"]
            used |= set(re.findall(r"tcpaccept_[a-z_]+", expr))
            assert 'node=~"$node"' in expr, expr
            if "lost_events" not in expr:  # lost events are per agent, not per workload
                assert 'namespace=~"$namespace"' in expr and 'container=~"$container"' in expr
            if "rate(" in expr:
                assert "[$__rate_interval]" in expr, expr
    assert used == METRICS
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in ("per listener", "per container", "p50", "p99", "limit", "dropped", "lost"):
        assert topic in titles, topic
