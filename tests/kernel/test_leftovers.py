"""The checks that keep the suite from leaving tracers behind, each shown to fail a run
that does (positive controls; tests/unit/test_leftovers.py covers plain processes)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.inner_run import run_inner_pytest
from tests.support.leftovers import program_loaded

pytestmark = pytest.mark.method_agnostic  # the test harness, not the attach method


def test_a_passing_test_that_leaves_its_tracer_running_fails_and_it_is_stopped(
        tmp_path: Path) -> None:
    inner = run_inner_pytest(tmp_path, """
        from pathlib import Path
        from tests.support.tracer import start_tracer

        def test_forgets_its_tracer() -> None:
            run = start_tracer()
            Path(__file__).with_name("ids").write_text(" ".join(map(str, run.programs)))
    """)
    assert inner.returncode == 1, inner.stdout + inner.stderr
    assert "1 passed, 1 error" in inner.stdout, inner.stdout
    assert "the test left its tracer running" in inner.stdout
    assert "left running by the tests" not in inner.stdout  # stopped at teardown
    ids = [int(i) for i in (tmp_path / "ids").read_text().split()]
    assert ids and not [i for i in ids if program_loaded(i)]


def test_programs_the_pytest_process_still_holds_fail_the_run(tmp_path: Path) -> None:
    inner = run_inner_pytest(tmp_path, """
        from tcpaccept.config import Config
        from tcpaccept.tracer import Tracer
        from tests.support.tracer import PROBE

        HELD = []

        def test_opens_a_tracer_and_never_closes_it() -> None:
            HELD.append(Tracer(Config(probe=PROBE)).__enter__())
    """)
    assert inner.returncode == 1, inner.stdout + inner.stderr
    assert "1 passed" in inner.stdout, inner.stdout
    assert "left running by the tests" in inner.stdout
    assert "still held open by the pytest process" in inner.stdout, inner.stdout


def test_loaded_programs_are_seen_through_the_tracers_own_fds() -> None:
    from tests.support.tracer import start_tracer

    with start_tracer() as run:
        ids = run.bpf_ids("prog")
        assert ids and ids == run.programs and all(program_loaded(i) for i in ids)
    # The kernel frees a detached program after an RCU grace period: allow it a moment.
    deadline = time.monotonic() + 5
    while any(map(program_loaded, ids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [i for i in ids if program_loaded(i)]


def test_a_module_fixtures_tracer_is_left_to_its_fixture(tmp_path: Path) -> None:
    inner = run_inner_pytest(tmp_path, """
        import pytest
        from tests.support.tracer import start_tracer

        @pytest.fixture(scope="module")
        def tracer():
            with start_tracer() as run:
                yield run

        def test_one(tracer) -> None:
            assert tracer.proc.poll() is None

        def test_two(tracer) -> None:
            assert tracer.proc.poll() is None  # not stopped after test_one
    """)
    assert inner.returncode == 0, inner.stdout + inner.stderr
    assert "2 passed" in inner.stdout and "left running" not in inner.stdout
