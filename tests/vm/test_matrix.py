"""Issue 3: the host's kernel test suite, run inside each stock kernel with each method forced.

Every kernel here has fexit, kprobes and syscall tracepoints, so each runs all three.
The guests (single-threaded TCG, one CPU each) run two at a time, one per host core; each
test below then reads its own run's outcome. The table of results and times is printed at
the end of the session and written to the guest cache as matrix.txt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guest import KERNELS, GuestResult, run_in_guest
from guest_suites import Outcome, assert_suite_passed, run_cells, table

METHODS = ("fexit", "kprobe", "tracepoint")
# The method-agnostic modules run once per kernel (with the tracepoint method) in a guest of
# their own, the rest with each method: the matrix's time goes where the methods differ,
# and no guest runs much longer than the others (two run at a time: the longest first).
AGNOSTIC = "method-agnostic"
COMBINATIONS = [(k, m) for k in sorted(KERNELS, key=lambda v: tuple(map(int, v.split("."))))
                for m in (*METHODS, AGNOSTIC)]
LONGEST_FIRST = sorted(COMBINATIONS, key=lambda km: (km[1] != AGNOSTIC, km[1] != "tracepoint"))
# About 10 min for the longest guest on an idle host (5.10, method-agnostic), twice that
# beside busy loops (scripts/test-busy.sh); the timeout only catches a hung guest.
GUEST_TIMEOUT_S = 2700
RESULTS: dict[tuple[str, str], Outcome] = {}


def _suite(kernel: str, method: str, repo: Path, cache: Path) -> GuestResult:
    if method == AGNOSTIC:
        probe, wanted = "tracepoint", "not host_only and method_agnostic"
    else:
        probe, wanted = method, "not host_only and not method_agnostic"
    return run_in_guest(
        kernel, [".venv/bin/python", "-m", "pytest", "-q", "-rfEs", "--durations=15",
                 "-m", wanted, "tests/kernel"], repo,
        timeout=GUEST_TIMEOUT_S, env={"TCPACCEPT_TEST_PROBE": probe}, cache=cache,
    )


@pytest.fixture(scope="module")
def matrix(vm_cache: Path, repo_root: Path) -> dict:
    run_cells(LONGEST_FIRST, lambda k, m: _suite(k, m, repo_root, vm_cache), RESULTS)
    (vm_cache / "matrix.txt").write_text(matrix_table() + "\n")
    return RESULTS


def matrix_table() -> str:
    return table(COMBINATIONS, RESULTS)


@pytest.mark.parametrize("kernel,method", COMBINATIONS, ids=[f"{k}-{m}" for k, m in COMBINATIONS])
def test_kernel_suite_passes(matrix: dict, kernel: str, method: str) -> None:
    assert_suite_passed(matrix[(kernel, method)], f"guest {kernel} {method}")
