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
COMBINATIONS = [(k, m) for k in sorted(KERNELS, key=lambda v: tuple(map(int, v.split("."))))
                for m in METHODS]
PARALLEL_GUESTS = max(1, min(2, os.cpu_count() or 1))
RESULTS: dict[tuple[str, str], GuestResult | GuestError] = {}


def _suite(kernel: str, method: str, repo: Path, cache: Path) -> GuestResult:
    # Method-agnostic modules once per kernel (with the tracepoint method), the rest with
    # each method: the matrix's time goes where the methods differ.
    wanted = "not host_only" if method == "tracepoint" else "not host_only and not method_agnostic"
    return run_in_guest(
        kernel, [".venv/bin/python", "-m", "pytest", "-q", "-rfEs", "--durations=15",
                 "-m", wanted, "tests/kernel"], repo,
        timeout=1500, env={"TCPACCEPT_TEST_PROBE": method}, cache=cache,
    )


@pytest.fixture(scope="module")
def matrix(vm_cache: Path, repo_root: Path) -> dict:
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_GUESTS) as pool:
        futures = {pool.submit(_suite, k, m, repo_root, vm_cache): (k, m)
                   for k, m in COMBINATIONS}
        for future in concurrent.futures.as_completed(futures):
            try:
                RESULTS[futures[future]] = future.result()
            except GuestError as exc:
                RESULTS[futures[future]] = exc
    (vm_cache / "matrix.txt").write_text(matrix_table() + "\n")
    return RESULTS


def matrix_table() -> str:
    lines = [f"{'kernel':<8} {'method':<11} {'result':<7} {'seconds':>8}  summary"]
    for kernel, method in COMBINATIONS:
        result = RESULTS.get((kernel, method))
        if isinstance(result, GuestResult):
            verdict = "pass" if result.returncode == 0 else "FAIL"
            tail = result.output.strip().splitlines()[-1] if result.output.strip() else ""
            lines.append(f"{kernel:<8} {method:<11} {verdict:<7} {result.seconds:>8.1f}  {tail}")
        elif result is not None:
            lines.append(f"{kernel:<8} {method:<11} {'ERROR':<7} {'-':>8}  {result}")
    return "\n".join(lines)


@pytest.mark.parametrize("kernel,method", COMBINATIONS, ids=[f"{k}-{m}" for k, m in COMBINATIONS])
def test_kernel_suite_passes(matrix: dict, kernel: str, method: str) -> None:
    result = matrix[(kernel, method)]
    if isinstance(result, GuestError):
        pytest.fail(f"guest {kernel} failed: {result}", pytrace=False)
    assert result.returncode == 0, result.output[-6000:]
    assert " passed" in result.output and " failed" not in result.output
