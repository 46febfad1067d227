"""What the fleet tests read from the shipped deployment files, and the tools they run on them.

The DaemonSet is the single source of the agent's privileges and arguments: the image test
turns it into a podman command line and the Prometheus test into a host command, so the
tests run the agent exactly as the cluster would, not as the tests would like.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "tcpaccept.json"
VENV_BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.30.0"


def validate_manifest(path: Path) -> subprocess.CompletedProcess:
    """kubernetes-validate --strict against Kubernetes 1.30 (schemas ship in the package: no
    network). Unknown kinds only warn there; the caller decides what an unknown kind means."""
    return subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION,
         str(path)], capture_output=True, text=True, timeout=120)


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render_kustomization(directory: Path = KUBERNETES) -> list[dict[str, Any]]:
    """`kubectl kustomize` (built-in kustomize, offline): what `kubectl apply -k` applies."""
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def rendered_for_runtime(runtime: str, work: Path,
                         extra_components: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The shipped kustomization with its runtime component swapped for `runtime` (an
    overlay in `work`: kustomize loads files below the kustomization's own root only)."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    work.mkdir(parents=True, exist_ok=True)
    for name in kustomization["resources"]:
        (work / name).write_text((KUBERNETES / name).read_text())
    components = [c for c in kustomization["components"] if "runtime-" not in c]
    components += [f"components/{name}" for name in (runtime, *extra_components)]
    kustomization["components"] = [os.path.relpath(KUBERNETES / c, work) for c in components]
    (work / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return render_kustomization(work)


@functools.lru_cache(maxsize=1)
def _shipped() -> tuple[dict[str, Any], ...]:
    return tuple(render_kustomization())  # once per test run: kubectl takes ~0.2 s


def daemonset(documents: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """The DaemonSet as rendered (components applied), or the one in `documents`."""
    docs = documents if documents is not None else copy.deepcopy(list(_shipped()))
    (doc,) = [d for d in docs if d["kind"] == "DaemonSet"]
    return doc


def prometheus_rule() -> dict[str, Any]:
    """deploy/prometheus/tcpaccept-rules.yml as a prometheus-operator PrometheusRule."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "tcpaccept", "namespace": "tcpaccept",
                         "labels": {"app.kubernetes.io/name": "tcpaccept",
                                    "release": "kube-prometheus-stack"}},
            "spec": yaml.safe_load((PROMETHEUS / "tcpaccept-rules.yml").read_text())}


def agent_container(ds: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    (container,) = (ds or daemonset())["spec"]["template"]["spec"]["containers"]
    return container


def granted_capabilities() -> list[str]:
    return list(agent_container()["securityContext"]["capabilities"]["add"])


def host_mounts(ds: Optional[dict[str, Any]] = None) -> list[tuple[str, str, bool]]:
    """(host path, container path, read-only) for every hostPath volume mounted."""
    ds = ds or daemonset()
    spec = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    return [(volumes[m["name"]], m["mountPath"], bool(m.get("readOnly")))
            for m in agent_container(ds)["volumeMounts"]]


def agent_args(metrics_address: str, host_root: str) -> list[str]:
    """The DaemonSet's arguments, with the listen address and host root swapped for ours."""
    args = list(agent_container()["args"])
    args[args.index("--metrics") + 1] = metrics_address
    args[args.index("--host-root") + 1] = host_root
    return args


def scrape(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$')
LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric `name` in a Prometheus text exposition."""
    found = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match["name"] == name:
            labels = {m["key"]: m["value"] for m in LABEL.finditer(match["labels"] or "")}
            found.append((labels, float(match["value"])))
    return found


def accepts_on_port(text: str, port: int) -> float:
    return sum(value for labels, value in samples(text, "tcpaccept_accepts_total")
               if labels.get("lport") == str(port))
