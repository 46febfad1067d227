"""Caching behaviour of ContainerResolver, on a directory tree standing in for cgroup2 (its
directories' inode numbers play the cgroup ids, as on kernfs) and a clock the test moves.
The same resolver against the real cgroup2 tree and real containers is in
tests/kernel/test_container_resolver.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcpaccept.containers import ContainerResolver, Selector
from tcpaccept.model import Container
from tests.support import runtime_state

ID_A = "9832cd0e4f1e5b3c8d2a7f6b1c0e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e"
ID_B = "4c1f2e3d4c5b6a7980a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8"
UID = "1f3b7c52-8a4d-4e2b-9c1d-2e3f4a5b6c7d"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Node:
    """A host root with state files and a stand-in cgroup tree."""

    def __init__(self, tmp_path: Path) -> None:
        self.host_root = str(tmp_path / "host")
        self.cgroup_root = tmp_path / "cgroup"
        self.cgroup_root.mkdir()
        os.makedirs(self.host_root)
        self.clock = Clock()
        self.resolver = ContainerResolver(self.host_root, ttl_gone_s=600,
                                          cgroup_root=str(self.cgroup_root), clock=self.clock)

    def cgroup(self, path: str) -> int:
        directory = self.cgroup_root / path.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        return directory.stat().st_ino

    def podman(self, container_id: str, name: str) -> int:
        runtime_state.podman_container(self.host_root, container_id, [name])
        return self.cgroup(f"/libpod_parent/libpod-{container_id}")


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def test_first_lookup_reads_state_later_ones_are_cached(node: Node) -> None:
    cgroup_id = node.podman(ID_A, "web-a")
    expected = Container(ID_A, "web-a", runtime="podman")
    assert node.resolver.resolve(cgroup_id) == expected
    os.remove(os.path.join(node.host_root,
                           "var/lib/containers/storage/overlay-containers/containers.json"))
    assert node.resolver.resolve(cgroup_id) == expected
    assert (node.resolver.state_reads, node.resolver.cgroups.walks) == (1, 1)


def test_host_cgroup_is_negatively_cached(node: Node) -> None:
    cgroup_id = node.cgroup("/system.slice/sshd.service")
    for _ in range(3):
        node.clock.now += 5
        assert node.resolver.resolve(cgroup_id) is None
    assert (node.resolver.state_reads, node.resolver.cgroups.walks) == (0, 1)


def test_a_flood_of_unknown_ids_walks_once_per_interval(node: Node) -> None:
    node.podman(ID_A, "web-a")
    for unknown in range(10**9, 10**9 + 1000):
        assert node.resolver.resolve(unknown) is None
    assert node.resolver.cgroups.walks == 1
    node.clock.now += 0.5
    for unknown in range(10**9, 10**9 + 1000):
        node.resolver.resolve(unknown)
    assert node.resolver.cgroups.walks == 2


def test_container_started_later_resolves_after_the_walk_interval(node: Node) -> None:
    node.podman(ID_A, "web-a")
    node.resolver.resolve(node.cgroup("/"))
    late = node.podman(ID_B, "web-b")
    assert node.resolver.resolve(late) is None  # the last walk was just now
    node.clock.now += 0.5
    assert node.resolver.resolve(late) == Container(ID_B, "web-b", runtime="podman")


def test_removed_container_resolves_until_the_ttl(node: Node) -> None:
    cgroup_id = node.podman(ID_A, "web-a")
    assert node.resolver.resolve(cgroup_id) is not None
    os.rmdir(node.cgroup_root / f"libpod_parent/libpod-{ID_A}")
    os.remove(os.path.join(node.host_root,
                           "var/lib/containers/storage/overlay-containers/containers.json"))
    node.clock.now += 1
    node.resolver.resolve(123456789)  # a miss walks: the removal is noticed
    node.clock.now += 599
    node.resolver.resolve(123456789)
    assert node.resolver.resolve(cgroup_id) == Container(ID_A, "web-a", runtime="podman")
    node.clock.now += 2
    node.resolver.resolve(123456789)  # now gone for longer than the TTL: forgotten
    assert node.resolver.resolve(cgroup_id) is None


def test_name_written_after_the_first_event_is_picked_up(node: Node) -> None:
    cgroup_id = node.cgroup(f"/libpod_parent/libpod-{ID_A}")
    assert node.resolver.resolve(cgroup_id) == Container(ID_A, runtime="podman")
    runtime_state.podman_container(node.host_root, ID_A, ["web-a"])
    assert node.resolver.resolve(cgroup_id).name is None  # re-read at most once a second
    node.clock.now += 1
    assert node.resolver.resolve(cgroup_id).name == "web-a"


def test_root_cgroup_id_falls_back_to_proc_pid_cgroup(node: Node) -> None:
    proc = Path(node.host_root) / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "4242").mkdir()
    (proc / "4242" / "cgroup").write_text(
        f"4:memory:/docker/{ID_A}\n1:name=systemd:/docker/{ID_A}\n0::/\n")
    runtime_state.docker_container(node.host_root, ID_A, "api")
    resolver = ContainerResolver(node.host_root, cgroup_root=str(node.cgroup_root),
                                 clock=node.clock)
    assert resolver.resolve(1, 4242) == Container(ID_A, "api", runtime="docker")
    assert resolver.resolve(1) is None  # no pid: nothing to go on
    assert resolver.resolve(987654321, 4242) == Container(ID_A, "api", runtime="docker")
    assert resolver.resolve(1, 999999) is None  # the process is gone


def test_v2_line_wins_over_v1_lines(node: Node) -> None:
    proc = Path(node.host_root) / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "77").mkdir()
    (proc / "77" / "cgroup").write_text(
        f"4:memory:/docker/{ID_B}\n0::/libpod_parent/libpod-{ID_A}\n")
    runtime_state.podman_container(node.host_root, ID_A, ["web-a"])
    resolver = ContainerResolver(node.host_root, cgroup_root=str(node.cgroup_root))
    assert resolver.resolve(1, 77) == Container(ID_A, "web-a", runtime="podman")


def test_cgroup_ids_for_covers_descendants_and_later_containers(node: Node) -> None:
    a = node.podman(ID_A, "web-a")
    a_child = node.cgroup(f"/libpod_parent/libpod-{ID_A}/worker")
    node.podman(ID_B, "web-b")
    node.cgroup("/system.slice/sshd.service")
    selector = Selector.from_flags(container="web-a,web-c")
    assert node.resolver.cgroup_ids_for(selector) == {a, a_child}
    id_c = "c" * 64
    c = node.podman(id_c, "web-c")
    node.clock.now += 1
    assert node.resolver.cgroup_ids_for(selector) == {a, a_child, c}
    assert node.resolver.cgroup_ids_for(Selector.from_flags(container=ID_B[:12])) == {
        node.cgroup(f"/libpod_parent/libpod-{ID_B}")}


def test_cgroup_ids_for_pod_and_namespace(node: Node) -> None:
    slice_ = ("/kubepods.slice/kubepods-besteffort.slice/"
              f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice")
    runtime_state.containerd_cri_task(node.host_root, ID_A, "web", "shop-7d9f", "shop", UID)
    runtime_state.containerd_cri_task(node.host_root, ID_B, None, "shop-7d9f", "shop", UID)
    web = node.cgroup(f"{slice_}/cri-containerd-{ID_A}.scope")
    pause = node.cgroup(f"{slice_}/cri-containerd-{ID_B}.scope")
    node.podman("c" * 64, "shop-7d9f")  # a podman container named like the pod
    assert node.resolver.cgroup_ids_for(Selector.from_flags(pod="shop-7d9f")) == {web, pause}
    assert node.resolver.cgroup_ids_for(Selector.from_flags(k8s_namespace="shop")) == {
        web, pause}
    assert node.resolver.cgroup_ids_for(Selector.from_flags(container="web")) == {web}


def test_housekeeping_walks_when_no_filter_does(node: Node) -> None:
    from tcpaccept.containers.resolver import HOUSEKEEPING_CALLS

    cgroup_id = node.podman(ID_A, "web-a")
    node.resolver.resolve(cgroup_id)
    os.rmdir(node.cgroup_root / f"libpod_parent/libpod-{ID_A}")
    for _ in range(HOUSEKEEPING_CALLS):
        node.resolver.resolve(cgroup_id)
    assert node.resolver.cgroups.is_present(cgroup_id)  # not yet: the last walk is recent
    node.clock.now += 60
    for _ in range(HOUSEKEEPING_CALLS):
        node.resolver.resolve(cgroup_id)
    assert not node.resolver.cgroups.is_present(cgroup_id)
    assert node.resolver.resolve(cgroup_id) is not None  # still within the TTL


def test_paths_learned_without_a_walk_are_forgotten_after_the_ttl(tmp_path: Path) -> None:
    from tcpaccept.containers import CgroupTree

    clock = Clock()
    tree = CgroupTree(str(tmp_path), ttl_gone_s=10, clock=clock)
    tree.learn(424242, "/gone/before/any/walk")
    tree.walk()
    assert tree.path(424242) == "/gone/before/any/walk"
    clock.now += 11
    assert tree.walk() == {424242} and tree.path(424242) is None


def test_a_stand_in_tree_is_not_taken_for_cgroup2_by_file_handles(node: Node) -> None:
    assert node.resolver.handles is None  # so these tests exercise the walk


def test_filter_refresh_walks_only_when_inotify_saw_a_change(node: Node) -> None:
    a = node.podman(ID_A, "web-a")
    selector = Selector.from_flags(container="web-a,web-b")
    assert node.resolver.cgroup_ids_for(selector) == {a}
    node.clock.now += 1
    node.resolver.cgroup_ids_for(selector)  # the first walk added watches: walk once more
    settled = node.resolver.cgroups.walks
    for _ in range(5):
        node.clock.now += 1
        assert node.resolver.cgroup_ids_for(selector) == {a}
    assert node.resolver.cgroups.walks == settled
    b = node.podman(ID_B, "web-b")
    node.clock.now += 1
    assert node.resolver.cgroup_ids_for(selector) == {a, b}
    assert node.resolver.cgroups.walks == settled + 1
    node.cgroup(f"/libpod_parent/libpod-{ID_B}/deeper")  # in a directory watched since
    node.clock.now += 1
    node.resolver.cgroup_ids_for(selector)
    node.clock.now += 1
    assert len(node.resolver.cgroup_ids_for(selector)) == 3


def test_names_are_awaited_for_name_wait_s_only(node: Node) -> None:
    cgroup_id = node.cgroup(f"/libpod_parent/libpod-{ID_A}")  # plain: no state, no name
    node.resolver.resolve(cgroup_id)
    for _ in range(15):
        node.clock.now += 1
        node.resolver.resolve(cgroup_id)
    assert node.resolver.state_reads == 10  # first read + one a second for 9 more seconds
