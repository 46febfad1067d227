"""Issue 3: the host's kernel test suite, run inside each stock kernel with each method forced.

Every kernel here has fexit, kprobes and syscall tracepoints, so each runs all three.
The guests (single-threaded TCG, one CPU each) run two at a time, one per host core; each
test below then reads its own run's outcome. The table of results and times is printed at
the end of the session and written to the guest cache as matrix.txt.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import pytest
from guest import KERNELS, GuestError, GuestResult, run_in_guest

METHODS = ("fexit", "kprobe", "tracepoint")
# The method-agnostic modules run once per kernel (with the tracepoint method) in a guest of
# their own, the rest with each method: the matrix's time goes where the methods differ,
# and no guest runs much longer than the others (two run at a time: the longest first).
AGNOSTIC = "method-agnostic"
COMBINATIONS = [(k, m) for k in sorted(KERNELS, key=lambda v: tuple(map(int, v.split("."))))
                for m in (*METHODS, AGNOSTIC)]
LONGEST_FIRST = sorted(COMBINATIONS, key=lambda km: (km[1] != AGNOSTIC, km[1] != "tracepoint"))
PARALLEL_GUESTS = max(1, min(2, os.cpu_count() or 1))
# About 10 min for the longest guest on an idle host (5.10, method-agnostic), twice that
# beside busy loops (scripts/test-busy.sh); the timeout only catches a hung guest.
GUEST_TIMEOUT_S = 2700
RESULTS: dict[tuple[str, str], GuestResult | GuestError] = {}


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
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_GUESTS) as pool:
        futures = {pool.submit(_suite, k, m, repo_root, vm_cache): (k, m)
                   for k, m in LONGEST_FIRST}
        for future in concurrent.futures.as_completed(futures):
            try:
                RESULTS[futures[future]] = future.result()
            except GuestError as exc:
                RESULTS[futures[future]] = exc
    (vm_cache / "matrix.txt").write_text(matrix_table() + "\n")
    return RESULTS


def matrix_table() -> str:
    lines = [f"{'kernel':<8} {'method':<15} {'result':<7} {'seconds':>8}  summary"]
    for kernel, method in COMBINATIONS:
        result = RESULTS.get((kernel, method))
        if isinstance(result, GuestResult):
            verdict = "pass" if result.returncode == 0 else "FAIL"
            tail = result.output.strip().splitlines()[-1] if result.output.strip() else ""
            lines.append(f"{kernel:<8} {method:<15} {verdict:<7} {result.seconds:>8.1f}  {tail}")
        elif result is not None:
            lines.append(f"{kernel:<8} {method:<15} {'ERROR':<7} {'-':>8}  {result}")
    return "\n".join(lines)


@pytest.mark.parametrize("kernel,method", COMBINATIONS, ids=[f"{k}-{m}" for k, m in COMBINATIONS])
def test_kernel_suite_passes(matrix: dict, kernel: str, method: str) -> None:
    result = matrix[(kernel, method)]
    if isinstance(result, GuestError):
        pytest.fail(f"guest {kernel} failed: {result}", pytrace=False)
    assert result.returncode == 0, result.output[-6000:]
    assert " passed" in result.output and " failed" not in result.output
