"""Shared by every test directory: nothing the tests start may outlive them.

Per test: a tracer the test did not stop is stopped at teardown, and a test that passed
while leaving one running fails (it would have leaked on its first failure). Per session:
processes started by the run (found by the environment marker they inherit) still alive,
BPF programs its tracers loaded still loaded, or programs pytest itself still holds fail
the run, and the processes are ended. See tests/support/leftovers.py."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from tests.support import leftovers
from tests.support.tracer import RUNNING, stop_leftover_tracers

MARKER = leftovers.mark_run()
_FOUND: list[str] = []
_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed


@pytest.fixture(autouse=True)
def stops_its_tracers(request: pytest.FixtureRequest) -> Iterator[None]:
    # Running already: a module- or session-scoped fixture's tracer, not this test's.
    shared = list(RUNNING)
    yield
    left = stop_leftover_tracers(spare=shared)
    if left and not request.node.stash.get(_CALL_FAILED, True):
        pytest.fail("the test left its tracer running (use `with start_tracer(...)` or "
                    "stop it): " + "; ".join(left), pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    if os.environ.get(leftovers.MARKER_ENV) != MARKER:
        return
    _FOUND.extend(leftovers.leftovers(MARKER))
    for pid in leftovers.marked_processes(MARKER):  # ours by the marker: end them
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if _FOUND:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if _FOUND:
        terminalreporter.write_sep("=", "left running by the tests", red=True)
        for line in _FOUND:
            terminalreporter.write_line(line)
