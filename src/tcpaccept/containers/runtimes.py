"""Container id -> names, from the state files each runtime keeps on the node.

No API server, no runtime socket: only files, so the tool needs read access to a few
directories of the host (under ``host_root`` when it runs in a container itself):

=========== ============================================================== ===================
runtime     file (relative to host_root)                                   names read
=========== ============================================================== ===================
containerd  run/containerd/io.containerd.runtime.v2.task/<ns>/<id>/        CRI annotations
            config.json (any containerd namespace: k8s.io, default, moby)  io.kubernetes.cri.*
            (k3s and RKE2: run/k3s/containerd/..., k0s: run/k0s/containerd/...,
            microk8s: var/snap/microk8s/common/run/containerd/...)
cri-o       run/containers/storage/overlay-containers/<id>/userdata/       io.kubernetes.
            config.json (or the same under var/lib/containers/storage)     container.name, pod.*
docker      var/lib/docker/containers/<id>/config.v2.json                  Name (and the
                                                                           io.kubernetes.* labels)
podman      var/lib/containers/storage/overlay-containers/containers.json  names[0]
=========== ============================================================== ===================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from ..model import Container

# containerd's state directory (its --state) by distribution: the task bundles are under it,
# never its API socket's directory itself (the DaemonSet mounts only the bundles).
CONTAINERD_STATE_DIRS = ("run/containerd", "run/k3s/containerd", "run/k0s/containerd",
                         "var/snap/microk8s/common/run/containerd")
CONTAINERD_TASK_DIRS = tuple(f"{state}/io.containerd.runtime.v2.task"
                             for state in CONTAINERD_STATE_DIRS)
STORAGE_DIRS = ("run/containers/storage", "var/lib/containers/storage")  # containers/storage
STORAGE_DRIVERS = ("overlay", "vfs", "btrfs", "zfs")  # <driver>-containers/
DOCKER_CONTAINERS = "var/lib/docker/containers"

# CRI annotations (containerd) and cri-o's annotations, as Kubernetes names them.
CRI_CONTAINERD = ("io.kubernetes.cri.container-name", "io.kubernetes.cri.sandbox-name",
                  "io.kubernetes.cri.sandbox-namespace")
CRI_O = ("io.kubernetes.container.name", "io.kubernetes.pod.name",
         "io.kubernetes.pod.namespace")
CRI_CONTAINERD_TYPE = "io.kubernetes.cri.container-type"  # "sandbox" for the pause container


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def _annotations(spec: Any) -> dict[str, str]:
    if isinstance(spec, dict) and isinstance(spec.get("annotations"), dict):
        return spec["annotations"]
    return {}


def _kubernetes(container_id: str, runtime: str, values: dict[str, str],
                keys: tuple[str, str, str]) -> Optional[Container]:
    name, pod, namespace = (values.get(key) for key in keys)
    if pod is None and namespace is None:
        return None
    return Container(container_id, name or None, pod, namespace, runtime)


@dataclass
class _ParsedFile:
    mtime_ns: int
    size: int
    value: Any


class RuntimeState:
    """Reads the runtimes' state files under ``host_root``; one lookup per container id
    (the resolver caches the results). containers/storage's ``containers.json`` lists every
    podman container in one file: it is parsed once per change (mtime/size), not per id."""

    def __init__(self, host_root: str = "/") -> None:
        self.host_root = host_root
        self._storage_lists: dict[str, _ParsedFile] = {}

    def _path(self, *parts: str) -> str:
        return os.path.join(self.host_root, *parts)

    def lookup(self, container_id: str, runtime_hint: Optional[str] = None) -> Container:
        """The container's names; a Container with the id only if no runtime knows it."""
        readers = [self._containerd, self._crio_or_podman, self._docker]
        if runtime_hint == "docker":
            readers.reverse()  # docker's own file has the name; its containerd task has not
        for reader in readers:
            found = reader(container_id)
            if found is not None:
                return found
        return Container(container_id, runtime=runtime_hint)

    def _containerd(self, container_id: str) -> Optional[Container]:
        for task_dir in CONTAINERD_TASK_DIRS:
            found = self._containerd_task(self._path(task_dir), container_id)
            if found is not None:
                return found
        return None

    def _containerd_task(self, tasks: str, container_id: str) -> Optional[Container]:
        try:
            namespaces = sorted(os.listdir(tasks), key=lambda ns: ns != "k8s.io")
        except OSError:
            return None
        for namespace in namespaces:
            spec = _read_json(os.path.join(tasks, namespace, container_id, "config.json"))
            if spec is None:
                continue
            annotations = _annotations(spec)
            found = _kubernetes(container_id, "containerd", annotations, CRI_CONTAINERD)
            if found is not None:
                return found
            if namespace == "moby":
                return self._docker(container_id)  # docker keeps the name, not containerd
            # plain containerd (ctr, nerdctl) has ids, not names; nerdctl's label says
            return Container(container_id, annotations.get("nerdctl/name"),
                             runtime="containerd")
        return None

    def _storage_list(self, storage: str, driver: str) -> list[Any]:
        path = self._path(storage, f"{driver}-containers", "containers.json")
        try:
            stat = os.stat(path)
        except OSError:
            return []
        cached = self._storage_lists.get(path)
        if cached is None or (cached.mtime_ns, cached.size) != (stat.st_mtime_ns, stat.st_size):
            value = _read_json(path)
            cached = _ParsedFile(stat.st_mtime_ns, stat.st_size,
                                 value if isinstance(value, list) else [])
            self._storage_lists[path] = cached
        return cached.value

    def _crio_or_podman(self, container_id: str) -> Optional[Container]:
        for storage in STORAGE_DIRS:
            for driver in STORAGE_DRIVERS:
                userdata = self._path(storage, f"{driver}-containers", container_id,
                                      "userdata")
                if not os.path.isdir(userdata):
                    continue
                annotations = _annotations(_read_json(os.path.join(userdata, "config.json")))
                # podman writes its spec here too, marked as libpod's; a pod's
                # annotations there are podman's, not cri-o's
                runtime = ("podman" if annotations.get("io.container.manager") == "libpod"
                           else "cri-o")
                found = _kubernetes(container_id, runtime, annotations, CRI_O)
                if found is not None:
                    return found
                for entry in self._storage_list("var/lib/containers/storage", driver):
                    if isinstance(entry, dict) and entry.get("id") == container_id:
                        names = entry.get("names") or [None]
                        return Container(container_id, names[0], runtime="podman")
        return None

    def _docker(self, container_id: str) -> Optional[Container]:
        config = _read_json(self._path(DOCKER_CONTAINERS, container_id, "config.v2.json"))
        if not isinstance(config, dict):
            return None
        labels = (config.get("Config") or {}).get("Labels") or {}
        found = _kubernetes(container_id, "docker", labels, CRI_O)  # dockershim's labels
        if found is not None:
            return found
        name = config.get("Name") or ""
        return Container(container_id, name.lstrip("/") or None, runtime="docker")
