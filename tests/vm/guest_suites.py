"""Many guest runs of the kernel suite, two at a time, and their table and verdicts: what the
x86_64 matrix (test_matrix.py) and the arm64 one (test_arm64.py) share."""

from __future__ import annotations

import concurrent.futures
import os
from typing import Callable, Iterable, Union

import pytest
from guest import GuestError, GuestResult

Cell = tuple[str, str]  # (kernel, method)
Outcome = Union[GuestResult, GuestError]
# Single-threaded TCG: one guest per host core, at most two.
PARALLEL_GUESTS = max(1, min(2, os.cpu_count() or 1))


def run_cells(cells: Iterable[Cell], run: Callable[[str, str], GuestResult],
              results: dict[Cell, Outcome]) -> dict[Cell, Outcome]:
    """run(kernel, method) for each cell, in the order given, PARALLEL_GUESTS at a time;
    each outcome (a result, or the GuestError of a guest that did not finish) lands in
    `results` as it comes, so a table printed after an interruption shows what finished."""
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_GUESTS) as pool:
        futures = {pool.submit(run, kernel, method): (kernel, method)
                   for kernel, method in cells}
        for future in concurrent.futures.as_completed(futures):
            try:
                results[futures[future]] = future.result()
            except GuestError as exc:
                results[futures[future]] = exc
    return results


def table(cells: Iterable[Cell], results: dict[Cell, Outcome]) -> str:
    """One line per cell that has an outcome: verdict, seconds, pytest's last line."""
    lines = [f"{'kernel':<8} {'method':<15} {'result':<7} {'seconds':>8}  summary"]
    for kernel, method in cells:
        result = results.get((kernel, method))
        if isinstance(result, GuestResult):
            verdict = "pass" if result.returncode == 0 else "FAIL"
            tail = result.output.strip().splitlines()[-1] if result.output.strip() else ""
            lines.append(f"{kernel:<8} {method:<15} {verdict:<7} {result.seconds:>8.1f}  {tail}")
        elif result is not None:
            lines.append(f"{kernel:<8} {method:<15} {'ERROR':<7} {'-':>8}  {result}")
    return "\n".join(lines)


def assert_suite_passed(result: Outcome, where: str) -> None:
    """The guest's pytest ran, passed tests and failed none."""
    if isinstance(result, GuestError):
        pytest.fail(f"{where} failed: {result}", pytrace=False)
    assert result.returncode == 0, result.output[-6000:]
    assert " passed" in result.output and " failed" not in result.output
