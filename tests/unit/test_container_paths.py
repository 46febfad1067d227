"""cgroup path -> container id, one row per shape each runtime and cgroup driver produces.

The paths are shaped as the runtimes write them (ids are 64 hex digits, pod UIDs 36-char
UUIDs, underscores in systemd slice names)."""

from __future__ import annotations

from typing import Optional

import pytest

from tcpaccept.containers import container_from_path

ID = "9832cd0e4f1e5b3c8d2a7f6b1c0e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e"
OUTER = "4c1f2e3d4c5b6a7980a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8"
UID = "1f3b7c52-8a4d-4e2b-9c1d-2e3f4a5b6c7d"
UID_ = UID.replace("-", "_")

SHAPES: list[tuple[str, Optional[str], Optional[str], Optional[str]]] = [
    # (path, container id, runtime, pod uid)
    (f"/docker/{ID}", ID, "docker", None),
    (f"/system.slice/docker-{ID}.scope", ID, "docker", None),
    (f"/libpod_parent/libpod-{ID}", ID, "podman", None),
    (f"/machine.slice/libpod-{ID}.scope", ID, "podman", None),
    (f"/machine.slice/libpod-{ID}.scope/container", ID, "podman", None),
    (f"/libpod_parent/{OUTER}/libpod-{ID}", ID, "podman", None),  # podman pod, cgroupfs
    (f"/system.slice/containerd.service/cri-containerd-{ID}.scope", ID, "containerd", None),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
     f"cri-containerd-{ID}.scope", ID, "containerd", UID),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"crio-{ID}.scope", ID, "cri-o", UID),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope", ID, "cri-o", UID),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"crio-{ID}.scope/container", ID, "cri-o", UID),
    (f"/kubepods/besteffort/pod{UID}/{ID}", ID, "kubernetes", UID),
    (f"/kubepods/burstable/pod{UID}/{ID}", ID, "kubernetes", UID),
    (f"/kubepods/pod{UID}/{ID}", ID, "kubernetes", UID),  # Guaranteed QoS: no class level
    (f"/k8s.io/{ID}", ID, None, None),  # containerd, cgroupfs, no kubelet parent
    # kind / k3d: a kubelet in a docker container; the innermost container wins
    (f"/docker/{OUTER}/kubepods/besteffort/pod{UID}/{ID}", ID, "kubernetes", UID),
    (f"/docker/{OUTER}/system.slice/sshd.service", OUTER, "docker", None),
    # not containers
    ("/", None, None, None),
    ("/system.slice/sshd.service", None, None, None),
    ("/user.slice/user-0.slice/session-3.scope", None, None, None),
    ("/libpod_parent/conmon", None, None, None),
    (f"/machine.slice/libpod-conmon-{ID}.scope", None, None, None),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"crio-conmon-{ID}.scope", None, None, None),
    (f"/kubepods/besteffort/pod{UID}", None, None, None),  # the pod's own cgroup
    (f"/docker/{ID[:63]}", None, None, None),  # 63 digits
    (f"/docker/{ID.upper()}", None, None, None),  # runtimes write lower case only
    (f"/system.slice/docker-{ID}.service", None, None, None),
]


@pytest.mark.parametrize("path,container_id,runtime,pod_uid", SHAPES,
                         ids=[shape[0][-48:] for shape in SHAPES])
def test_container_from_path(path: str, container_id: Optional[str], runtime: Optional[str],
                             pod_uid: Optional[str]) -> None:
    match = container_from_path(path)
    if container_id is None:
        assert match is None
    else:
        assert match is not None
        assert (match.container_id, match.runtime, match.pod_uid) == (container_id, runtime,
                                                                       pod_uid)


def test_trailing_and_doubled_slashes_do_not_change_the_answer() -> None:
    match = container_from_path(f"//libpod_parent//libpod-{ID}/")
    assert match is not None and match.container_id == ID
