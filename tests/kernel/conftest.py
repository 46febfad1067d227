from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="session", autouse=True)
def bpf_works() -> None:
    """Every kernel test needs root and an attach method that loads here: say so once."""
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (they load BPF programs)", pytrace=False)
    check = subprocess.run([sys.executable, "-m", "tcpaccept.cli", "--check"],
                           capture_output=True, text=True, timeout=120)
    if check.returncode != 0:
        pytest.fail(f"no BPF attach method works here:\n{check.stdout}{check.stderr}",
                    pytrace=False)


# Modules (or module::test) that need this host's real components (podman and the other
# container runtimes, clang, a full-speed machine for load and memory bounds) rather than a
# particular kernel or attach method: the qemu kernel matrix (tests/vm) runs every other
# test of this directory in the guests, and leaves these to the host run.
HOST_ONLY = {
    "test_containers.py",  # podman
    "test_container_resolver.py",  # podman, docker, containerd
    "test_drops_containers.py",  # podman
    "test_bounded_state.py",  # tens of thousands of connections and RSS bounds
    "test_hardening.py",  # sustained accept load against a stalled reader
    "test_metrics_lost.py",  # the same load and stalled reader, with --metrics
    "test_metrics_storm.py",  # 4,096 listeners, a scrape storm, time and RSS bounds
    "test_abi.py",  # builds edited BPF objects with clang (the guests have no compiler)
    "test_accept_program.py::test_a_refused_btf_walk_falls_back_to_probe_reads",  # clang
    # setpriv users, podman, this host's tracefs and /proc permissions: the least-privilege
    # findings are about this host's set-up, not about a kernel or a method.
    "test_privileges.py",
}


# Modules (or module::test) whose outcome does not depend on the attach method (sock_diag,
# output, the session, cgroup bookkeeping, map bounds): the matrix runs them once per
# kernel, with the tracepoint method, instead of once per method.
METHOD_AGNOSTIC = {
    "test_cli.py",
    "test_drops.py",
    "test_drops_cli.py",
    "test_drops_netns.py",
    "test_follow_cgroup.py",
    "test_hostile_names.py",
    "test_session.py",
    "test_scrape_reads_no_map.py",  # what the scrape thread reads, not how accepts arrive
    # The maps' bounds: the same kernel code whatever method delivers the accepts.
    "test_queue_latency.py::test_never_accepted_connections_leave_the_latency_map_bounded",
    "test_aggregate.py::test_summary_remotes_map_is_bounded_and_says_when_it_evicts",
    "test_aggregate.py::test_a_full_listener_map_counts_what_it_could_not_aggregate",
    "test_aggregate.py::test_idle_listener_series_expire_and_its_counter_restarts",
    # One pid-namespace test per method is enough; the rest is namespace bookkeeping.
    "test_pid_namespace.py::test_accepts_outside_the_namespace_are_not_shown_but_counted",
    "test_pid_namespace.py::test_a_nested_namespace_is_numbered_as_the_tracer_sees_it",
    "test_pid_namespace.py::test_the_initial_namespace_prints_no_notice",
}


def _listed(item: pytest.Item, names: set[str]) -> bool:
    """A module name, or module::test (every parametrization of that test)."""
    module = item.fspath.basename
    return module in names or f"{module}::{item.originalname}" in names


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kernel/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            if _listed(item, HOST_ONLY):
                item.add_marker(pytest.mark.host_only)
            if _listed(item, METHOD_AGNOSTIC):
                item.add_marker(pytest.mark.method_agnostic)
