"""deploy/kubernetes: strict schema validation against Kubernetes 1.30, and the properties
the issue asks of the DaemonSet (hostPID, not privileged, few capabilities, read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.fleet.deployment import (
    KUBERNETES,
    agent_container,
    daemonset,
    granted_capabilities,
    host_mounts,
    load_documents,
    validate_manifest,
)

CORE_MANIFESTS = ["namespace.yaml", "serviceaccount.yaml", "daemonset.yaml", "service.yaml"]
# prometheus-operator CRDs: kubernetes-validate has no schema for them (it warns "Couldn't
# find schema"), so their spec is checked field by field below instead.
OPERATOR_MANIFESTS = ["podmonitor.yaml", "servicemonitor.yaml"]


@pytest.mark.parametrize("name", CORE_MANIFESTS)
def test_manifest_passes_strict_validation(name: str) -> None:
    result = validate_manifest(KUBERNETES / name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


@pytest.mark.parametrize("breakage", [
    ("hostPID: true", 'hostPID: "yes"'),  # wrong type
    ("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"),  # unknown field (strict)
])
def test_broken_daemonset_is_rejected(tmp_path: Path, breakage: tuple[str, str]) -> None:
    good, bad = breakage
    text = (KUBERNETES / "daemonset.yaml").read_text()
    assert good in text
    broken = tmp_path / "daemonset.yaml"
    broken.write_text(text.replace(good, bad))
    result = validate_manifest(broken)
    assert result.returncode != 0, f"{bad!r} was accepted:\n{result.stdout}{result.stderr}"
    assert "did not validate" in result.stdout + result.stderr


def test_kustomization_lists_existing_manifests_of_one_namespace() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "tcpaccept"
    for name in kustomization["resources"]:
        for doc in load_documents(KUBERNETES / name):
            assert doc["metadata"].get("namespace", "tcpaccept") == "tcpaccept" or \
                doc["kind"] == "Namespace"
    assert set(CORE_MANIFESTS) <= set(kustomization["resources"])
    (image,) = kustomization["images"]
    assert agent_container()["image"].startswith(image["name"] + ":")


def test_daemonset_runs_unprivileged_with_bpf_and_perfmon_only() -> None:
    pod = daemonset()["spec"]["template"]["spec"]
    security = agent_container()["securityContext"]
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork", False)
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    # tests/fleet/test_image.py proves these two suffice; anything more needs a test too.
    assert sorted(granted_capabilities()) == ["BPF", "PERFMON"]


def test_daemonset_mounts_host_state_read_only() -> None:
    mounts = {host: (inside, read_only) for host, inside, read_only in host_mounts()}
    assert mounts == {
        "/sys/kernel/btf": ("/sys/kernel/btf", True),
        "/sys/fs/cgroup": ("/host/sys/fs/cgroup", True),
        "/sys/kernel/tracing": ("/sys/kernel/tracing", True),
        "/run/containerd": ("/host/run/containerd", True),
        "/var/lib/docker/containers": ("/host/var/lib/docker/containers", True),
        "/run/containers/storage": ("/host/run/containers/storage", True),
        "/var/lib/containers/storage": ("/host/var/lib/containers/storage", True),
    }


def test_agent_command_probes_and_resources() -> None:
    container = agent_container()
    assert container["args"] == ["--metrics", "0.0.0.0:9435", "--quiet", "--host-root", "/host"]
    assert container["ports"][0]["containerPort"] == 9435
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    resources = container["resources"]
    assert set(resources) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(resources["requests"]) <= set(resources["limits"])


def test_service_carries_scrape_annotations() -> None:
    (service,) = load_documents(KUBERNETES / "service.yaml")
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9435"
    assert service["spec"]["selector"] == daemonset()["spec"]["selector"]["matchLabels"]


# The fields of the prometheus-operator v1 API these manifests may use (from its API
# reference); anything else is a typo the operator would reject or silently ignore.
ENDPOINT_FIELDS = {"port", "path", "interval", "honorLabels", "relabelings"}
RELABEL_FIELDS = {"sourceLabels", "targetLabel", "regex", "replacement", "action", "separator"}


@pytest.mark.parametrize("name", OPERATOR_MANIFESTS)
def test_operator_monitor_keeps_workload_labels(name: str) -> None:
    # Schema-less in kubernetes-validate: its metadata and kind still go through the tool,
    # which must only warn about the missing schema, not fail.
    result = validate_manifest(KUBERNETES / name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Couldn't find schema" in result.stdout + result.stderr
    (monitor,) = load_documents(KUBERNETES / name)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    endpoints_key = {"PodMonitor": "podMetricsEndpoints", "ServiceMonitor": "endpoints"}
    spec = monitor["spec"]
    assert set(spec) == {"selector", endpoints_key[monitor["kind"]]}
    assert spec["selector"]["matchLabels"] == daemonset()["spec"]["selector"]["matchLabels"]
    (endpoint,) = spec[endpoints_key[monitor["kind"]]]
    assert set(endpoint) <= ENDPOINT_FIELDS
    # Without honorLabels our namespace/pod labels would become exported_namespace/pod.
    assert endpoint["honorLabels"] is True
    assert endpoint["port"] == "metrics"
    for relabeling in endpoint.get("relabelings", []):
        assert set(relabeling) <= RELABEL_FIELDS
