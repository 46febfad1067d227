"""tests/support/child.py, the start/banner/stop/drain helper of the tests and the bench,
with real child processes (small Python scripts)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.child import Child, ChildError, free_port

# Prints a banner, then one line per SIGINT; exits on the `exit_on`-th SIGINT.
COUNTS_SIGINTS = """
import signal, sys, time
seen = 0
def on_int(signum, frame):
    global seen
    seen += 1
    print(f"sigint {seen}", flush=True)
    if seen >= int(sys.argv[1]):
        sys.exit(3)
signal.signal(signal.SIGINT, on_int)
print("ready", flush=True)
print("to stderr", file=sys.stderr, flush=True)
while True:
    time.sleep(0.01)
"""


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def test_banner_time_and_both_streams_are_captured() -> None:
    child = Child(python(COUNTS_SIGINTS, "1"))
    try:
        seconds = child.wait_for_line(lambda line: line == "ready", what="banner")
        assert 0 < seconds < 10
        child.wait_for_text("to stderr", "stderr")
    finally:
        assert child.stop() == 3
    assert child.text("stdout") == "ready\nsigint 1\n"
    assert child.text("stderr") == "to stderr\n"
    assert not child.killed
    assert child.maxrss_kb and child.maxrss_kb > 1000  # a Python interpreter's, from wait4
    assert child.hwm_kb and child.hwm_kb > 1000


def test_signal_is_resent_until_the_child_exits() -> None:
    child = Child(python(COUNTS_SIGINTS, "3"))
    child.wait_for_text("ready")
    assert child.stop(resend_every=0.1, timeout=10) == 3
    assert child.text().splitlines()[1:] == ["sigint 1", "sigint 2", "sigint 3"]
    assert not child.killed


def test_a_child_that_ignores_the_signal_is_killed_after_the_timeout() -> None:
    child = Child(python(COUNTS_SIGINTS, "1000"))
    child.wait_for_text("ready")
    started = time.monotonic()
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    assert child.killed
    assert 0.5 <= time.monotonic() - started < 5
    assert child.stop() == -signal.SIGKILL  # idempotent


def test_exit_before_the_banner_is_an_error_with_its_stderr() -> None:
    child = Child(python("import sys; sys.exit('no BPF here')"))
    with pytest.raises(ChildError, match="exited with 1 before 'ready': no BPF here"):
        child.wait_for_text("ready")
    assert child.stop() == 1


def test_no_banner_in_time_is_an_error() -> None:
    child = Child(python("import time; time.sleep(30)"))
    try:
        with pytest.raises(ChildError, match="no 'ready' after 0 s"):
            child.wait_for_text("ready", timeout=0.3)
    finally:
        child.stop(signal.SIGTERM)


def test_a_large_output_never_blocks_the_childs_exit(tmp_path: Path) -> None:
    # 4 MB on stdout (far beyond a pipe's 64 KiB) and a file on stderr.
    script = "import sys; sys.stdout.write('x' * 4_000_000); print('done', file=sys.stderr)"
    child = Child(python(script), stderr=tmp_path / "err")
    child.wait_until(lambda: child.proc.poll() is not None, "exit", timeout=20)
    assert child.stop() == 0
    assert len(child.text("stdout")) == 4_000_000
    assert child.text("stderr") == "done\n"
    assert child.head("stderr", 2) == "do"


def test_devnull_stream_keeps_nothing() -> None:
    child = Child(python("print('gone')"), stdout=subprocess.DEVNULL)
    child.wait_until(lambda: child.proc.poll() is not None, "exit", timeout=20)
    assert child.stop() == 0
    assert child.text("stdout") == ""


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
