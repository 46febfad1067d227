"""State files shaped like each container runtime's, under a test's own host root.

Used where no runtime on this machine writes them (Kubernetes CRI annotations of containerd
and cri-o, dockershim labels). The shapes follow what the runtimes write: an OCI
``config.json`` with ``annotations``, docker's ``config.v2.json`` with ``Name`` and
``Config.Labels``, containers/storage's ``containers.json`` list with ``names``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional


def _write_json(path: str, value: Any) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        json.dump(value, file)
    return path


def _oci_spec(annotations: dict[str, str], cgroups_path: str = "") -> dict[str, Any]:
    return {"ociVersion": "1.0.2", "process": {"args": ["/pause"]}, "root": {"path": "rootfs"},
            "linux": {"cgroupsPath": cgroups_path}, "annotations": annotations}


def containerd_cri_task(host_root: str, container_id: str, name: Optional[str], pod: str,
                        namespace: str, pod_uid: str, containerd_namespace: str = "k8s.io",
                        sandbox_id: Optional[str] = None) -> str:
    """The task bundle config.json containerd's CRI plugin writes for a pod's container
    (``name=None``: the pod's sandbox, i.e. its pause container)."""
    annotations = {
        "io.kubernetes.cri.container-type": "container" if name else "sandbox",
        "io.kubernetes.cri.sandbox-name": pod,
        "io.kubernetes.cri.sandbox-namespace": namespace,
        "io.kubernetes.cri.sandbox-uid": pod_uid,
        "io.kubernetes.cri.sandbox-id": sandbox_id or container_id,
    }
    if name:
        annotations["io.kubernetes.cri.container-name"] = name
        annotations["io.kubernetes.cri.image-name"] = "localhost/busybox:latest"
    return _write_json(os.path.join(host_root, "run/containerd/io.containerd.runtime.v2.task",
                                    containerd_namespace, container_id, "config.json"),
                       _oci_spec(annotations))


def crio_container(host_root: str, container_id: str, name: str, pod: str, namespace: str,
                   pod_uid: str, storage: str = "run/containers/storage") -> str:
    """cri-o's container spec in its containers/storage userdata directory."""
    annotations = {
        "io.kubernetes.container.name": name,
        "io.kubernetes.pod.name": pod,
        "io.kubernetes.pod.namespace": namespace,
        "io.kubernetes.pod.uid": pod_uid,
        "io.kubernetes.cri-o.ContainerType": "container",
    }
    return _write_json(os.path.join(host_root, storage, "overlay-containers", container_id,
                                    "userdata", "config.json"), _oci_spec(annotations))


def docker_container(host_root: str, container_id: str, name: str,
                     labels: Optional[dict[str, str]] = None) -> str:
    """docker's config.v2.json (the name carries a leading slash)."""
    return _write_json(os.path.join(host_root, "var/lib/docker/containers", container_id,
                                    "config.v2.json"),
                       {"ID": container_id, "Name": f"/{name}",
                        "Config": {"Image": "busybox", "Labels": labels or {}},
                        "State": {"Running": True, "Pid": 4242}})


def podman_container(host_root: str, container_id: str, names: list[str]) -> str:
    """Add a container to containers/storage's containers.json, plus podman's userdata
    directories (its config.json is marked as libpod's and carries no names)."""
    storage = os.path.join(host_root, "var/lib/containers/storage/overlay-containers")
    listing = os.path.join(storage, "containers.json")
    entries: list[Any] = []
    if os.path.exists(listing):
        with open(listing) as file:
            entries = json.load(file)
    entries.append({"id": container_id, "names": names, "image": "0" * 64,
                    "layer": "1" * 64, "metadata": json.dumps({"name": names[0]})})
    _write_json(os.path.join(storage, container_id, "userdata", "config.json"),
                _oci_spec({"io.container.manager": "libpod",
                           "io.kubernetes.cri-o.Created": "2026-11-28T02:52:33Z"}))
    os.makedirs(os.path.join(host_root, "run/containers/storage/overlay-containers",
                             container_id, "userdata"), exist_ok=True)
    return _write_json(listing, entries)
