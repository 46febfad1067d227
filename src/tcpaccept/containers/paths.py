"""cgroup path -> container id, by the naming conventions of each runtime.

The path is walked from the leaf upward; the first component that names a container
wins, so a process in a sub-cgroup of a container (``libpod-<id>.scope/container``, a
systemd unit inside a container) is attributed to that container. Only exact shapes are
accepted: a component that merely contains 64 hex digits is not a container (conmon's
``libpod-conmon-<id>.scope`` and ``crio-conmon-<id>.scope`` watch a container from the
outside and must not be counted as it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_HEX64 = r"([0-9a-f]{64})"

# (pattern for one path component, runtime it implies); checked in order.
_COMPONENT_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"^docker-{_HEX64}\.scope$"), "docker"),  # systemd cgroup driver
    (re.compile(rf"^libpod-{_HEX64}(?:\.scope)?$"), "podman"),  # cgroupfs and systemd
    (re.compile(rf"^cri-containerd-{_HEX64}\.scope$"), "containerd"),
    (re.compile(rf"^crio-{_HEX64}\.scope$"), "cri-o"),
)
_BARE_ID = re.compile(rf"^{_HEX64}$")
# kubelet's cgroupfs driver: /kubepods[/<qos>]/pod<uid>/<id>
_POD_CGROUPFS = re.compile(r"^pod([0-9a-f-]{36})$")
# kubelet's systemd driver: kubepods-<qos>-pod<uid with _ for ->.slice (qos absent if Guaranteed)
_POD_SLICE = re.compile(r"^kubepods(?:-[a-z]+)?-pod([0-9a-f_]{36})\.slice$")


@dataclass(frozen=True)
class PathMatch:
    """What a cgroup path says about its container."""

    container_id: str
    runtime: Optional[str]  # the runtime the path's shape implies; None if it does not say
    pod_uid: Optional[str] = None  # Kubernetes pod UID when the path is under kubepods


def _pod_uid(components: list[str]) -> Optional[str]:
    for component in components:
        match = _POD_CGROUPFS.match(component)
        if match:
            return match.group(1)
        match = _POD_SLICE.match(component)
        if match:
            return match.group(1).replace("_", "-")
    return None


def container_from_path(path: str) -> Optional[PathMatch]:
    """The container a cgroup path belongs to, or None for a host cgroup.

    >>> container_from_path("/docker/" + "a" * 64).runtime
    'docker'
    """
    components = [c for c in path.split("/") if c]
    for index in range(len(components) - 1, -1, -1):
        component = components[index]
        for pattern, runtime in _COMPONENT_SHAPES:
            match = pattern.match(component)
            if match:
                return PathMatch(match.group(1), runtime, _pod_uid(components[:index]))
        match = _BARE_ID.match(component)
        if match:
            parent = components[index - 1] if index else ""
            pod_uid = _pod_uid(components[:index])
            if parent == "docker":
                runtime: Optional[str] = "docker"
            elif pod_uid is not None:
                runtime = "kubernetes"  # containerd or cri-o: the state files will tell
            else:
                runtime = None  # e.g. containerd's /<namespace>/<id> with cgroupfs
            return PathMatch(match.group(1), runtime, pod_uid)
    return None
