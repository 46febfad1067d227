"""What naming the container of an event costs (issue 13 item 1).

    sudo .venv/bin/python bench/container_resolve.py [--cgroups 600] [--json out.json]

Starts two real podman containers (tests/support/containers.py: a local busybox image,
``--runtime runc``), adds ``--cgroups`` empty cgroups in a kubelet-like layout to the real
cgroup2 tree (a busy node's tree; removed at the end), and measures with
``ContainerResolver``:
- the cgroup2 walk (scandir, no stat per cgroup), with and without the extra cgroups;
- a first lookup: path by file handle (open_by_handle_at) + state files, and the same
  without file handles (walk + state files); then the state-file read alone per runtime: podman
  (containers.json), containerd CRI, cri-o and docker (spec files shaped like theirs,
  built from the podman container's real config.json, under a temporary host root);
- a cached lookup (container, host cgroup, the root id with the /proc/PID fallback), and
  floods of unknown ids: with file handles each id costs one open_by_handle_at, once;
  without them the walk is rate-limited (the walks are counted);
- ``cgroup_ids_for``, i.e. what the filter refresh costs once a second: when nothing
  changed (inotify says so: no walk) and after a cgroup was made and removed (a walk).
Exit 1 if a container does not resolve to its own name; 2 if podman cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
sys.path.insert(0, os.path.join(HERE, ".."))

from tcpaccept.containers import ContainerResolver, RuntimeState, Selector  # noqa: E402
from tcpaccept.containers.cgroup_tree import CgroupTree, cgroup2_mount  # noqa: E402
from tests.support import runtime_state  # noqa: E402
from tests.support.containers import Podman, RunningContainer, unique_name  # noqa: E402


def median_us(run: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        run()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def per_call_ns(run: Callable[[int], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for index in range(calls):
        run(index)
    return (time.perf_counter_ns() - start) / calls


class BusyTree:
    """Empty cgroups shaped like kubelet's (pods of two containers) under a top directory
    of our own in the real cgroup2 tree; removed on exit."""

    def __init__(self, count: int) -> None:
        self.top = os.path.join(cgroup2_mount(), f"tcpa-bench-{secrets.token_hex(4)}")
        self.count = count

    def __enter__(self) -> BusyTree:
        made = 0
        os.mkdir(self.top)
        try:
            while made < self.count:
                pod = os.path.join(self.top, "kubepods", "besteffort", f"pod{uuid.uuid4()}")
                os.makedirs(pod)
                made += 1
                for _ in range(2):
                    os.mkdir(os.path.join(pod, secrets.token_hex(32)))
                    made += 1
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for directory, _dirs, _files in sorted(os.walk(self.top), key=lambda w: -len(w[0])):
            os.rmdir(directory)


def state_read_costs(container: RunningContainer, repeat: int) -> dict[str, float]:
    """µs per RuntimeState.lookup (fresh object: no parsed-file cache) for each runtime."""
    spec_path = (f"/var/lib/containers/storage/overlay-containers/{container.id}"
                 "/userdata/config.json")
    with open(spec_path) as file:
        real_spec = json.load(file)
    costs = {"podman (containers.json)": median_us(
        lambda: RuntimeState("/").lookup(container.id, "podman"), repeat)}
    host_root = tempfile.mkdtemp(prefix="tcpa-bench-")
    try:
        uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
        for path in (runtime_state.containerd_cri_task(host_root, cid, "web", "shop-7d9f",
                                                       "shop", uid),
                     runtime_state.crio_container(host_root, cid, "web", "shop-7d9f", "shop",
                                                  uid)):
            with open(path) as file:
                annotations = json.load(file)["annotations"]
            with open(path, "w") as file:  # a real spec's size, with the runtime's annotations
                json.dump({**real_spec, "annotations": {**real_spec["annotations"],
                                                        **annotations}}, file)
        costs["containerd CRI (config.json)"] = median_us(
            lambda: RuntimeState(host_root).lookup(cid, "containerd"), repeat)
        shutil.rmtree(os.path.join(host_root, "run/containerd"))
        costs["cri-o (config.json)"] = median_us(
            lambda: RuntimeState(host_root).lookup(cid, "cri-o"), repeat)
        runtime_state.docker_container(host_root, cid, "api")
        costs["docker (config.v2.json)"] = median_us(
            lambda: RuntimeState(host_root).lookup(cid, "docker"), repeat)
        costs["spec file size (bytes)"] = float(len(json.dumps(real_spec)))
    finally:
        shutil.rmtree(host_root, ignore_errors=True)
    return costs


def measure(containers: list[RunningContainer], extra_cgroups: int, repeat: int,
            calls: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    root = cgroup2_mount()
    tree = CgroupTree(root)
    figures["walk (µs)"] = median_us(tree.walk, repeat)
    figures["cgroups on this host"] = float(sum(1 for _ in tree.present()))
    target = containers[0]
    cgroup_id = target.cgroup_id

    fresh = [ContainerResolver() for _ in range(repeat)]
    if fresh[0].handles is None:
        raise SystemExit("open_by_handle_at refused on the cgroup2 tree: the resolver walks")
    figures["first lookup: file handle + state files (µs)"] = median_us(
        lambda: fresh.pop().resolve(cgroup_id), repeat)
    handles = ContainerResolver().handles
    assert handles is not None
    figures["  of which: id -> path by file handle (µs)"] = median_us(
        lambda: handles.path(cgroup_id), repeat)
    walking = [ContainerResolver(file_handles=False) for _ in range(repeat)]
    figures["first lookup without file handles: walk + state (µs)"] = median_us(
        lambda: walking.pop().resolve(cgroup_id), repeat)
    for runtime, cost in state_read_costs(target, repeat).items():
        figures[f"state read, {runtime} (µs)" if "bytes" not in runtime else runtime] = cost

    resolver = ContainerResolver()
    for container in containers:
        found = resolver.resolve(container.cgroup_id)
        if found is None or found.name != container.name:
            raise SystemExit(f"{container.name} resolved to {found}: the resolver is wrong")
    resolver.refresh()
    host_id = next(i for i, p in resolver.cgroups.present() if p == "/libpod_parent")
    resolver.resolve(host_id)
    figures["cached lookup, container (ns)"] = per_call_ns(
        lambda _i: resolver.resolve(cgroup_id), calls)
    figures["cached lookup, host cgroup (ns)"] = per_call_ns(
        lambda _i: resolver.resolve(host_id), calls)
    figures["cached lookup, root id + pid fallback (ns)"] = per_call_ns(
        lambda _i: resolver.resolve(1, target.pid), calls)
    walks_before = resolver.cgroups.walks
    flood = min(calls, 20_000)
    figures[f"unknown ids, first time each ({flood} ids, ns per event)"] = per_call_ns(
        lambda i: resolver.resolve((1 << 62) + i), flood)
    figures[f"unknown ids, again ({flood} ids, ns per event)"] = per_call_ns(
        lambda i: resolver.resolve((1 << 62) + i), flood)
    figures["  walks during both floods"] = float(resolver.cgroups.walks - walks_before)
    no_handles = ContainerResolver(file_handles=False)
    no_handles.refresh()
    start = time.monotonic()
    events = 0
    while time.monotonic() - start < 2:
        for i in range(1000):
            no_handles.resolve((1 << 61) + events + i)
        events += 1000
    figures["unknown ids without file handles (ns per event, 2 s)"] = (
        (time.monotonic() - start) * 1e9 / events)
    figures["  walks in those 2 s (at most 1 per 0.5 s)"] = float(no_handles.cgroups.walks - 1)

    selector = Selector.from_flags(container=target.name)
    refreshing = ContainerResolver(min_walk_interval_s=0)
    ids = refreshing.cgroup_ids_for(selector)
    if ids != {cgroup_id}:
        raise SystemExit(f"cgroup_ids_for({target.name}) = {ids}, expected {{{cgroup_id}}}")
    if not refreshing.cgroups.watch_changes():
        raise SystemExit("inotify is not available: every filter refresh walks the tree")
    probe = os.path.join(root, f"tcpa-bench-probe-{secrets.token_hex(4)}")

    def after_a_change() -> object:
        os.mkdir(probe)  # timed too: a few µs
        os.rmdir(probe)
        return refreshing.cgroup_ids_for(selector)

    refreshing.cgroup_ids_for(selector)
    figures["cgroup_ids_for, nothing changed (µs)"] = median_us(
        lambda: refreshing.cgroup_ids_for(selector), repeat)
    figures["cgroup_ids_for after a cgroup was made (walk, µs)"] = median_us(
        after_a_change, repeat)
    with BusyTree(extra_cgroups):
        busy = CgroupTree(root)
        figures[f"walk with +{extra_cgroups} kubelet-like cgroups (µs)"] = median_us(
            busy.walk, repeat)
        refreshing.cgroup_ids_for(selector)
        refreshing.cgroup_ids_for(selector)
        # the extra "containers" have no state files: no names. For name_wait_s (10 s)
        # after they are first seen a name may still come, so every call matches again;
        # after that the match is cached until the tree changes
        figures[f"cgroup_ids_for, +{extra_cgroups} unnamed, nothing changed, first 10 s (µs)"
                ] = median_us(lambda: refreshing.cgroup_ids_for(selector), repeat)
        settled = ContainerResolver(min_walk_interval_s=0, name_wait_s=0)
        settled.cgroup_ids_for(selector)
        settled.cgroup_ids_for(selector)
        figures[f"cgroup_ids_for, +{extra_cgroups}, nothing changed, settled (µs)"] = median_us(
            lambda: settled.cgroup_ids_for(selector), repeat)
        settled.close()
        figures[f"cgroup_ids_for, +{extra_cgroups}, after a cgroup was made (µs)"] = median_us(
            after_a_change, repeat)
    refreshing.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cgroups", type=int, default=600,
                        help="extra empty cgroups for the busy-node walk (default 600)")
    parser.add_argument("--repeat", type=int, default=50, help="samples per median")
    parser.add_argument("--calls", type=int, default=200_000, help="calls per cached figure")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("container_resolve: needs root (podman, cgroup2 writes)", file=sys.stderr)
        return 2
    try:
        with Podman() as podman:
            containers = [podman.run(unique_name("tcpa-bench")) for _ in range(2)]
            figures = measure(containers, args.cgroups, args.repeat, args.calls)
    except RuntimeError as error:
        print(f"container_resolve: {error}", file=sys.stderr)
        return 2
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:>12.1f}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(figures, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
