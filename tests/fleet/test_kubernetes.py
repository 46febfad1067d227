"""deploy/kubernetes: strict schema validation against Kubernetes 1.30 (each manifest and the
rendered kustomization with every runtime component), and the properties the issues ask of
the rendered DaemonSet: hostPID, not privileged, two capabilities, read-only; the shipped
Localhost seccomp profile; probes on /healthz with a startupProbe; a priority class; only
runtime state files mounted, never a directory holding a runtime API socket, and no
hostPath that could create a directory on a node."""

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
    prometheus_rule,
    render_kustomization,
    rendered_for_runtime,
    validate_manifest,
)

CORE_MANIFESTS = ["namespace.yaml", "serviceaccount.yaml", "daemonset.yaml", "service.yaml"]
# prometheus-operator CRDs: kubernetes-validate has no schema for them (it warns "Couldn't
# find schema"), so their spec is checked field by field below instead.
OPERATOR_MANIFESTS = ["podmonitor.yaml", "servicemonitor.yaml"]
RUNTIME_COMPONENTS = ["runtime-containerd", "runtime-k3s", "runtime-microk8s", "runtime-k0s",
                      "runtime-cri-o", "runtime-docker"]
# Where each runtime keeps its API sockets (their documented defaults): a mount at or above
# one of these directories would let the pod drive the runtime, read-only or not.
RUNTIME_SOCKET_DIRS = ["/run/containerd", "/run/containerd/s", "/run/k3s/containerd",
                       "/var/snap/microk8s/common/run", "/run/k0s", "/run/crio", "/run",
                       "/var/run", "/run/docker.sock", "/run/podman", "/run/containers",
                       # conmon's attach sockets (podman, measured): <id>/userdata/attach
                       "/var/lib/containers/storage/overlay-containers"]


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


def test_kustomization_renders_one_namespace(tmp_path: Path) -> None:
    documents = render_kustomization()
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == ["DaemonSet", "Namespace", "PodMonitor", "PrometheusRule", "Service",
                     "ServiceAccount"]
    for doc in documents:
        assert doc["metadata"].get("namespace") == "tcpaccept" or doc["kind"] == "Namespace"
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert agent_container()["image"] == f"{image['name']}:{image['newTag']}"


@pytest.mark.parametrize("runtime", RUNTIME_COMPONENTS)
def test_rendered_kustomization_passes_strict_validation(tmp_path: Path, runtime: str) -> None:
    documents = rendered_for_runtime(runtime, tmp_path / "overlay")
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(documents))
    result = validate_manifest(rendered)
    assert result.returncode == 0, result.stdout + result.stderr
    mounts = host_mounts(daemonset(documents))
    runtime_mounts = [host for host, _, _ in mounts if host.startswith(("/run/", "/var/"))]
    assert runtime_mounts, f"{runtime} mounts no runtime state"
    for host, inside, read_only in mounts:
        assert read_only and inside in (host, "/host" + host), (host, inside)
    for host in runtime_mounts:
        # at no socket directory and above none: only state directories below them
        assert not any(socket_dir == host or socket_dir.startswith(host + "/")
                       for socket_dir in RUNTIME_SOCKET_DIRS), host
    volumes = daemonset(documents)["spec"]["template"]["spec"]["volumes"]
    # Directory: checked, never created (unset or DirectoryOrCreate would make one).
    assert {v["hostPath"]["type"] for v in volumes if "hostPath" in v} == {"Directory"}


def test_daemonset_runs_unprivileged_with_bpf_and_perfmon_only() -> None:
    pod = daemonset()["spec"]["template"]["spec"]
    security = agent_container()["securityContext"]
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork", False)
    assert pod["priorityClassName"] == "system-node-critical"
    # The shipped Localhost profile (components/seccomp-localhost); the bare daemonset.yaml
    # keeps RuntimeDefault for runtimes whose default allows bpf() to CAP_BPF.
    assert pod["securityContext"]["seccompProfile"] == {
        "type": "Localhost", "localhostProfile": "profiles/tcpaccept.json"}
    (bare,) = load_documents(KUBERNETES / "daemonset.yaml")
    assert bare["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"}
    assert (KUBERNETES / "seccomp" / "tcpaccept.json").is_file()
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
        # containerd's task bundles; containerd.sock is one level up, never mounted
        "/run/containerd/io.containerd.runtime.v2.task":
            ("/host/run/containerd/io.containerd.runtime.v2.task", True),
    }


def test_agent_command_probes_and_resources() -> None:
    container = agent_container()
    # dual-stack: tests/fleet/test_probes.py has these args answer on 127.0.0.1 and ::1
    assert container["args"] == ["--metrics", "[::]:9435", "--quiet", "--host-root", "/host"]
    assert container["ports"][0]["containerPort"] == 9435
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # a slow attach on a busy node is not a failed start
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    resources = container["resources"]
    assert set(resources) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(resources["requests"]) <= set(resources["limits"])


def test_pods_carry_scrape_annotations_and_the_service_none() -> None:
    annotations = daemonset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "9435",
                           "prometheus.io/path": "/metrics"}
    (service,) = load_documents(KUBERNETES / "service.yaml")
    assert "annotations" not in service["metadata"]  # else scraped twice
    assert service["spec"]["selector"] == daemonset()["spec"]["selector"]["matchLabels"]


def test_prometheus_rule_is_the_rules_file() -> None:
    (rule,) = load_documents(KUBERNETES / "prometheusrule.yaml")
    assert rule == prometheus_rule()
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


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
    # kube-prometheus-stack's default monitor selector
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
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
