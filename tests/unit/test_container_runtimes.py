"""Container id -> names from runtime state files shaped like each runtime's (written by
tests/support/runtime_state.py under a temporary host root)."""

from __future__ import annotations

import os
from pathlib import Path

from tcpaccept.containers import RuntimeState
from tcpaccept.model import Container
from tests.support import runtime_state

ID = "9832cd0e4f1e5b3c8d2a7f6b1c0e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e"
OTHER = "4c1f2e3d4c5b6a7980a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8"
UID = "1f3b7c52-8a4d-4e2b-9c1d-2e3f4a5b6c7d"


def test_containerd_cri_annotations_name_container_pod_and_namespace(tmp_path: Path) -> None:
    runtime_state.containerd_cri_task(str(tmp_path), ID, "web", "shop-7d9f", "shop", UID)
    assert RuntimeState(str(tmp_path)).lookup(ID, "containerd") == Container(
        ID, "web", "shop-7d9f", "shop", "containerd")


def test_containerd_sandbox_has_a_pod_but_no_container_name(tmp_path: Path) -> None:
    runtime_state.containerd_cri_task(str(tmp_path), ID, None, "shop-7d9f", "shop", UID)
    assert RuntimeState(str(tmp_path)).lookup(ID) == Container(
        ID, None, "shop-7d9f", "shop", "containerd")


def test_plain_containerd_namespace_gives_the_id_only(tmp_path: Path) -> None:
    runtime_state.containerd_cri_task(str(tmp_path), OTHER, "web", "p", "n", UID)
    spec = Path(runtime_state.containerd_cri_task(str(tmp_path), ID, "x", "p", "n", UID,
                                                  containerd_namespace="default"))
    spec.write_text('{"ociVersion": "1.0.2", "annotations": {}}')
    assert RuntimeState(str(tmp_path)).lookup(ID) == Container(ID, runtime="containerd")


def test_docker_task_in_containerd_moby_namespace_takes_dockers_name(tmp_path: Path) -> None:
    spec = Path(runtime_state.containerd_cri_task(str(tmp_path), ID, "x", "p", "n", UID,
                                                  containerd_namespace="moby"))
    spec.write_text('{"ociVersion": "1.0.2"}')
    runtime_state.docker_container(str(tmp_path), ID, "api")
    assert RuntimeState(str(tmp_path)).lookup(ID) == Container(ID, "api", runtime="docker")


def test_crio_annotations_in_run_or_var_lib(tmp_path: Path) -> None:
    runtime_state.crio_container(str(tmp_path), ID, "web", "shop-7d9f", "shop", UID)
    runtime_state.crio_container(str(tmp_path), OTHER, "db", "db-0", "data", UID,
                                 storage="var/lib/containers/storage")
    state = RuntimeState(str(tmp_path))
    assert state.lookup(ID, "cri-o") == Container(ID, "web", "shop-7d9f", "shop", "cri-o")
    assert state.lookup(OTHER) == Container(OTHER, "db", "db-0", "data", "cri-o")


def test_docker_name_loses_its_slash(tmp_path: Path) -> None:
    runtime_state.docker_container(str(tmp_path), ID, "api")
    assert RuntimeState(str(tmp_path)).lookup(ID, "docker") == Container(
        ID, "api", runtime="docker")


def test_dockershim_labels_name_the_pod(tmp_path: Path) -> None:
    runtime_state.docker_container(str(tmp_path), ID, "k8s_web_shop-7d9f_shop_uid_0", {
        "io.kubernetes.container.name": "web", "io.kubernetes.pod.name": "shop-7d9f",
        "io.kubernetes.pod.namespace": "shop"})
    assert RuntimeState(str(tmp_path)).lookup(ID, "docker") == Container(
        ID, "web", "shop-7d9f", "shop", "docker")


def test_podman_names_from_containers_json_reread_when_it_changes(tmp_path: Path) -> None:
    runtime_state.podman_container(str(tmp_path), ID, ["web-a"])
    state = RuntimeState(str(tmp_path))
    assert state.lookup(ID, "podman") == Container(ID, "web-a", runtime="podman")
    runtime_state.podman_container(str(tmp_path), OTHER, ["web-b"])
    assert state.lookup(OTHER, "podman") == Container(OTHER, "web-b", runtime="podman")


def test_unknown_id_keeps_the_runtime_the_path_implied(tmp_path: Path) -> None:
    assert RuntimeState(str(tmp_path)).lookup(ID, "cri-o") == Container(ID, runtime="cri-o")


def test_corrupt_state_files_are_no_names_not_an_exception(tmp_path: Path) -> None:
    spec = Path(runtime_state.crio_container(str(tmp_path), ID, "web", "p", "n", UID))
    spec.write_text("{not json")
    docker = Path(runtime_state.docker_container(str(tmp_path), OTHER, "api"))
    docker.write_text("[1, 2]")
    listing = tmp_path / "var/lib/containers/storage/overlay-containers"
    os.makedirs(listing)
    (listing / "containers.json").write_text('{"not": "a list"}')
    state = RuntimeState(str(tmp_path))
    assert state.lookup(ID) == Container(ID)
    assert state.lookup(OTHER, "docker") == Container(OTHER, runtime="docker")
