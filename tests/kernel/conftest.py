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


# Modules that need this host's real components (podman and the other container runtimes,
# a full-speed machine for load and memory bounds) rather than a particular kernel or
# attach method: the qemu kernel matrix (tests/vm) runs every other module of this
# directory in each guest with each method forced, and leaves these to the host run.
HOST_ONLY_MODULES = {
    "test_containers.py",  # podman
    "test_container_resolver.py",  # podman, docker, containerd
    "test_drops_containers.py",  # podman
    "test_bounded_state.py",  # tens of thousands of connections and RSS bounds
    "test_hardening.py",  # sustained accept load against a stalled reader
    "test_abi.py",  # builds edited BPF objects with clang (the guests have no compiler)
}


# Modules whose outcome does not depend on the attach method (sock_diag, output, the
# session, cgroup bookkeeping): the matrix runs them once per kernel, with the tracepoint
# method, instead of once per method.
METHOD_AGNOSTIC_MODULES = {
    "test_cli.py",
    "test_drops.py",
    "test_drops_cli.py",
    "test_drops_netns.py",
    "test_follow_cgroup.py",
    "test_hostile_names.py",
    "test_session.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kernel/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            if item.fspath.basename in HOST_ONLY_MODULES:
                item.add_marker(pytest.mark.host_only)
            if item.fspath.basename in METHOD_AGNOSTIC_MODULES:
                item.add_marker(pytest.mark.method_agnostic)
