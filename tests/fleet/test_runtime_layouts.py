"""Container names on k3s/RKE2, k0s and microk8s nodes: their embedded containerd keeps its
state elsewhere than /run/containerd. A real containerd (Debian's, a daemon of the test's
own) runs here with its state directory at each distribution's path under a temporary host
root, runs a real runc container under kubelet's cgroup layout with the annotations the CRI
plugin writes, and the resolver names it from there (as the agent does with --host-root
/host and the runtime's kustomize component). What the component mounts, the task bundle
directory, is checked for sockets: it holds none (the API and shim sockets live elsewhere).
No k3s, k0s or microk8s binary runs here: the layout is the containerd they embed, at
their documented state paths.
"""

from __future__ import annotations

import os
import secrets
import stat
import uuid
from pathlib import Path

import pytest
import yaml

from tcpaccept.containers import ContainerResolver
from tcpaccept.containers.runtimes import CONTAINERD_TASK_DIRS
from tcpaccept.model import Container
from tests.fleet.deployment import KUBERNETES
from tests.support.containers import ContainerdDaemon, cgroup2_mount

LAYOUTS = {  # component -> containerd state directory on such a node
    "runtime-containerd": "run/containerd",
    "runtime-k3s": "run/k3s/containerd",  # RKE2 too
    "runtime-k0s": "run/k0s/containerd",
    "runtime-microk8s": "var/snap/microk8s/common/run/containerd",
}


def component_mounts(component: str) -> list[str]:
    patch = yaml.safe_load((KUBERNETES / "components" / component / "kustomization.yaml")
                           .read_text())["patches"][0]["patch"]
    return [op["value"]["hostPath"]["path"] for op in yaml.safe_load(patch)
            if "hostPath" in op["value"]]


def sockets_under(directory: str) -> list[str]:
    found = []
    for parent, _dirs, files in os.walk(directory):
        found += [os.path.join(parent, f) for f in files
                  if stat.S_ISSOCK(os.lstat(os.path.join(parent, f)).st_mode)]
    return found


@pytest.mark.parametrize("component", sorted(LAYOUTS))
def test_containerd_state_of_each_distribution_names_the_pod(component: str,
                                                             tmp_path: Path) -> None:
    state = LAYOUTS[component]
    (mounted,) = component_mounts(component)
    assert mounted == f"/{state}/io.containerd.runtime.v2.task"
    assert mounted.lstrip("/") in CONTAINERD_TASK_DIRS  # the resolver looks there
    host_root = str(tmp_path / "host")
    uid, container_id = str(uuid.uuid4()), secrets.token_hex(32)
    cgroup = f"/kubepods/besteffort/pod{uid}/{container_id}"
    with ContainerdDaemon(host_root, "kubepods", state_dir=state) as containerd:
        container = containerd.run(container_id, cgroup, {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "web",
            "io.kubernetes.cri.sandbox-name": "shop-7d9f",
            "io.kubernetes.cri.sandbox-namespace": "shop",
            "io.kubernetes.cri.sandbox-uid": uid})
        assert container.cgroup_path == cgroup
        tasks = os.path.join(host_root, mounted.lstrip("/"))
        assert os.path.isfile(os.path.join(tasks, "k8s.io", container_id, "config.json"))
        assert sockets_under(tasks) == []
        resolver = ContainerResolver(host_root, cgroup_root=cgroup2_mount())
        assert resolver.resolve(container.cgroup_id) == Container(
            container_id, "web", "shop-7d9f", "shop", "containerd")
