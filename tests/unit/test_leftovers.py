"""The session-end check fails a run that leaves a process behind, and ends that process;
it does not count processes the run did not start."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.support import leftovers
from tests.support.inner_run import run_inner_pytest

LEAKS_A_SLEEP = """
    import subprocess
    from pathlib import Path

    def test_starts_and_forgets() -> None:
        sleeper = subprocess.Popen(["sleep", "300"])
        Path(__file__).with_name("pid").write_text(str(sleeper.pid))
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def test_a_process_left_running_fails_the_run_and_is_ended(tmp_path: Path) -> None:
    # Started by this run, not by the inner one: it must not be blamed on the inner run.
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        inner = run_inner_pytest(tmp_path, LEAKS_A_SLEEP)
        assert _alive(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()
    leaked = int((tmp_path / "pid").read_text())
    assert inner.returncode == 1, inner.stdout + inner.stderr
    assert "1 passed" in inner.stdout
    assert "left running by the tests" in inner.stdout
    assert f"process {leaked} still running: sleep 300" in inner.stdout
    deadline = time.monotonic() + 5
    while _alive(leaked) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(leaked)


def test_a_clean_run_passes(tmp_path: Path) -> None:
    inner = run_inner_pytest(tmp_path, """
        import subprocess

        def test_starts_and_waits() -> None:
            subprocess.run(["true"], check=True)
    """)
    assert inner.returncode == 0, inner.stdout + inner.stderr
    assert "left running" not in inner.stdout


def test_the_marker_is_inherited_and_found() -> None:
    marker = os.environ[leftovers.MARKER_ENV]
    with subprocess.Popen(["sleep", "30"]) as child:
        try:
            assert leftovers.marked_processes(marker).get(child.pid) == "sleep 30"
            assert leftovers.marked_processes("not-this-run") == {}
        finally:
            child.kill()
