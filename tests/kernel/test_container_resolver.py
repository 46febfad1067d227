"""Container resolution against real containers and the cgroup ids the kernel reports.

One tcpaccept (JSON) runs for the module; each test starts real containers serving on
127.0.0.1:8080 in their own network namespaces, connects inside each namespace, takes the
``cgroup_id`` of that container's accept event (what bpf_get_current_cgroup_id() gave) and
checks the resolver names the right container from it.

Runtimes: podman (system storage, host root /), docker and containerd (daemons of the
test's own whose state directories are under a temporary host root, as ``--host-root``
would see a node's). Kubernetes layouts: containerd runs real containers under kubelet's
cgroup paths (cgroupfs and systemd drivers) with the CRI annotations kubelet's runtime
would write; cri-o does not run here, so its layout is a real cgroup made with mkdir (a
real process moved in) plus a spec file shaped like cri-o's, and the test says so.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tcpaccept.containers import ContainerResolver, Selector
from tcpaccept.model import Container
from tests.support import runtime_state
from tests.support.containers import (
    ContainerdDaemon,
    DockerDaemon,
    HandMadeCgroup,
    Podman,
    RunningContainer,
    cgroup2_mount,
    connect_in_netns,
    unique_name,
)
from tests.support.tracer import TracerRun, start_tracer

pytestmark = pytest.mark.host_only  # podman, docker, containerd


@pytest.fixture(scope="module")
def tracer() -> Iterator[TracerRun]:
    run = start_tracer()
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture
def podman() -> Iterator[Podman]:
    with Podman() as runtime:
        yield runtime


def kernel_cgroup_id(tracer: TracerRun, container: RunningContainer, timeout: float = 10) -> int:
    """Connect inside the container's netns; the cgroup id of its accept, as traced."""
    connect_in_netns(container.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e for e in tracer.events() if e["pid"] == container.pid and e["lport"] == 8080]
        if events:
            assert len({e["cgroup_id"] for e in events}) == 1
            return int(events[0]["cgroup_id"])
        time.sleep(0.05)
    raise AssertionError(f"no accept traced for {container.name} (pid {container.pid})\n"
                         f"{tracer.stderr}")


def test_two_podman_containers_resolve_from_the_traced_cgroup_id(
        tracer: TracerRun, podman: Podman) -> None:
    first = podman.run(unique_name())
    second = podman.run(unique_name())
    resolver = ContainerResolver()
    for container in (first, second):
        cgroup_id = kernel_cgroup_id(tracer, container)
        assert container.cgroup_path == f"/libpod_parent/libpod-{container.id}"
        assert cgroup_id == container.cgroup_id  # the stat of its cgroup2 directory
        assert resolver.resolve(cgroup_id) == Container(container.id, container.name,
                                                        runtime="podman")
    assert resolver.resolve(os.stat(cgroup2_mount()).st_ino, os.getpid()) is None


def test_removed_podman_container_resolves_within_the_ttl(podman: Podman) -> None:
    container = podman.run(unique_name())
    kept = ContainerResolver(min_walk_interval_s=0)
    forgetful = ContainerResolver(ttl_gone_s=0, min_walk_interval_s=0)  # positive control
    expected = Container(container.id, container.name, runtime="podman")
    for resolver in (kept, forgetful):
        assert resolver.resolve(container.cgroup_id) == expected
    cgroup_id = container.cgroup_id
    podman.remove(container.name)
    time.sleep(0.01)
    for resolver in (kept, forgetful):
        resolver.refresh()  # what housekeeping or a filter refresh does
        assert not resolver.cgroups.is_present(cgroup_id)
    assert kept.resolve(cgroup_id) == expected  # a late event still names it
    forgetful.refresh()
    assert forgetful.resolve(cgroup_id) is None
    assert ContainerResolver().resolve(cgroup_id) is None  # never seen: nothing to name


def test_name_filter_matches_a_container_started_later(podman: Podman) -> None:
    early, late_name = podman.run(unique_name()), unique_name()
    resolver = ContainerResolver(min_walk_interval_s=0)
    selector = Selector.from_flags(container=late_name)
    assert resolver.cgroup_ids_for(selector) == set()
    late = podman.run(late_name)
    assert resolver.cgroup_ids_for(selector) == {late.cgroup_id}
    both = Selector.from_flags(container=f"{early.id[:12]},{late_name}")
    assert resolver.cgroup_ids_for(both) == {early.cgroup_id, late.cgroup_id}


def test_docker_container_resolves_from_dockers_state(tracer: TracerRun,
                                                      tmp_path: Path) -> None:
    host_root = str(tmp_path / "host")
    with DockerDaemon(host_root) as docker:
        container = docker.run(unique_name())
        cgroup_id = kernel_cgroup_id(tracer, container)
        assert container.cgroup_path == f"/docker/{container.id}"
        assert cgroup_id == container.cgroup_id
        resolver = ContainerResolver(host_root, cgroup_root=cgroup2_mount())
        assert resolver.resolve(cgroup_id) == Container(container.id, container.name,
                                                        runtime="docker")


def test_containerd_cri_containers_under_kubelet_cgroup_layouts(tracer: TracerRun,
                                                                 tmp_path: Path) -> None:
    """Real containerd + runc containers placed where kubelet puts them (cgroupfs driver:
    /kubepods/<qos>/pod<uid>/<id>; systemd driver: kubepods-<qos>-pod<uid_>.slice/
    cri-containerd-<id>.scope) with the annotations containerd's CRI plugin writes."""
    host_root = str(tmp_path / "host")
    uid = str(uuid.uuid4())
    pods = {"cgroupfs": f"/kubepods/besteffort/pod{uid}/{{id}}",
            "systemd": "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
                       f"{uid.replace('-', '_')}.slice/cri-containerd-{{id}}.scope"}
    with ContainerdDaemon(host_root, "kubepods") as cgroupfs_side, \
            ContainerdDaemon(host_root + "2", "kubepods.slice") as systemd_side:
        resolvers = {"cgroupfs": ContainerResolver(host_root, cgroup_root=cgroup2_mount()),
                     "systemd": ContainerResolver(host_root + "2",
                                                  cgroup_root=cgroup2_mount())}
        for driver, daemon in (("cgroupfs", cgroupfs_side), ("systemd", systemd_side)):
            container_id = secrets.token_hex(32)
            container = daemon.run(container_id, pods[driver].format(id=container_id), {
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.container-name": f"web-{driver}",
                "io.kubernetes.cri.sandbox-name": "shop-7d9f",
                "io.kubernetes.cri.sandbox-namespace": "shop",
                "io.kubernetes.cri.sandbox-uid": uid})
            cgroup_id = kernel_cgroup_id(tracer, container)
            assert container.cgroup_path == pods[driver].format(id=container_id)
            assert cgroup_id == container.cgroup_id
            assert resolvers[driver].resolve(cgroup_id) == Container(
                container_id, f"web-{driver}", "shop-7d9f", "shop", "containerd")
            assert resolvers[driver].cgroup_ids_for(
                Selector.from_flags(pod="shop-7d9f", k8s_namespace="shop")) == {cgroup_id}


def test_crio_layout_made_by_hand_and_its_conmon_is_not_a_container(tmp_path: Path) -> None:
    """cri-o does not run on this machine: its layout is made here. Real cgroups (mkdir in
    cgroup2, a real process moved in) named as cri-o with kubelet's systemd driver names
    them, and a spec file shaped like cri-o's under a temporary host root."""
    host_root = str(tmp_path / "host")
    uid, container_id = str(uuid.uuid4()), secrets.token_hex(32)
    pod_slice = ("/kubepods.slice/kubepods-besteffort.slice/"
                 f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice")
    runtime_state.crio_container(host_root, container_id, "web", "shop-7d9f", "shop", uid)
    expected = Container(container_id, "web", "shop-7d9f", "shop", "cri-o")
    with HandMadeCgroup(f"{pod_slice}/crio-{container_id}.scope") as scope, \
            HandMadeCgroup(f"{pod_slice}/crio-conmon-{container_id}.scope") as conmon:
        resolver = ContainerResolver(host_root, cgroup_root=cgroup2_mount())
        assert resolver.resolve(scope.cgroup_id) == expected
        assert resolver.resolve(conmon.cgroup_id) is None
        # the root id (as a cgroup v1-only host reports) falls back to /proc/PID/cgroup
        assert resolver.resolve(1, scope.pid) == expected
        assert resolver.resolve(1, conmon.pid) is None


def test_file_handles_name_new_cgroups_without_walking(podman: Podman) -> None:
    """open_by_handle_at on the real cgroup2 tree: a container started after the resolver's
    last walk resolves on its first event, and unknown ids (a flood of them) are looked
    up once each, never walked for."""
    resolver = ContainerResolver(min_walk_interval_s=3600)
    assert resolver.handles is not None
    resolver.refresh()
    container = podman.run(unique_name())
    assert resolver.resolve(container.cgroup_id) == Container(container.id, container.name,
                                                              runtime="podman")
    for unknown in range(1 << 62, (1 << 62) + 1000):
        assert resolver.resolve(unknown) is None
    assert resolver.cgroups.walks == 1
    assert resolver.cgroup_path(container.cgroup_id) == container.cgroup_path
