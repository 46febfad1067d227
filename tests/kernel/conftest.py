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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is a kernel test. What else a test needs is a marker on the test
    itself: host_only (this host's real components: container runtimes, clang, full-speed
    load; the qemu matrix leaves it to the host run) and method_agnostic (the outcome does
    not depend on the attach method; the matrix runs it with the tracepoint method only)."""
    for item in items:
        if "tests/kernel/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
