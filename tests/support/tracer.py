"""Runs the real tcpaccept command as a child process and reads what it printed.

The one way tests start a tracer: `start_tracer` (or `with start_tracer(...) as run:`).
Every run is stopped: by the test, by the `with`, or at the latest by the autouse fixture
in tests/conftest.py, which fails a passing test that left its tracer running. The ids of
the programs each tracer holds are recorded for the session-end leftover check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import TracebackType
from typing import Iterable, Optional, Sequence

from tests.support import leftovers
from tests.support.child import Child, ChildError, Output

BANNER = "Tracing TCP accepts. Hit Ctrl-C to end."
# The kernel matrix runs the same tests with each attach method forced.
PROBE = os.environ.get("TCPACCEPT_TEST_PROBE", "auto")


def attach_method() -> str:
    """The method the tests' tracer really uses here (what --check says auto picks)."""
    if PROBE != "auto":
        return PROBE
    check = subprocess.run([sys.executable, "-m", "tcpaccept.cli", "--check"],
                           capture_output=True, text=True, check=True)
    for line in check.stdout.splitlines():
        if line.startswith("auto would pick: "):
            return line.split(": ", 1)[1]
    raise AssertionError(f"--check did not say what auto picks:\n{check.stdout}")


def tcpaccept_command(*args: str, probe: str = PROBE) -> list[str]:
    return [sys.executable, "-m", "tcpaccept.cli", "--probe", probe, *args]


# Tracers started and not yet stopped: what the per-test fixture stops if a test did not.
RUNNING: list[TracerRun] = []


class TracerRun:
    """A running tcpaccept; reader threads keep everything it prints on both streams."""

    def __init__(self, child: Child, json_mode: bool) -> None:
        self.child = child
        self.proc = child.proc
        self.json_mode = json_mode
        self.programs: set[int] = set()  # ids it held once attached (its own fds)

    def __enter__(self) -> TracerRun:
        return self

    def __exit__(self, kind: Optional[type], value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        if kind is None:
            self.stop()
        else:  # the test's own failure is the one to report
            self.child.stop(signal.SIGINT, timeout=20)
            self._forget()

    def bpf_ids(self, kind: str = "prog") -> set[int]:
        """Ids of the programs or maps this tracer holds now: its own, whatever else the
        machine runs."""
        return leftovers.bpf_ids(self.proc.pid, kind)

    def bpf_fdinfo(self, kind: str = "prog") -> dict[int, dict[str, str]]:
        """As bpf_ids, with each one's fdinfo fields (type, max_entries, ...)."""
        return leftovers.bpf_fdinfo(self.proc.pid, kind)

    @property
    def returncode(self) -> Optional[int]:
        return self.child.returncode

    @property
    def stdout(self) -> str:
        return self.child.text("stdout")

    @property
    def stderr(self) -> str:
        return self.child.text("stderr")

    def text(self, stream: str = "stdout") -> str:
        """What it printed on `stream` so far (as Child.text)."""
        return self.child.text(stream)

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.strip()]

    def wait_for_lines(self, n: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.lines) < n and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> TracerRun:
        """Signal the tracer, wait for it to exit and its output to be read; idempotent.
        A tracer that ignores the signal is killed and fails the test."""
        # settle: let events already in the ring buffer reach the tracer before it drains.
        self.child.stop(sig, settle=0.3, timeout=timeout)
        self._forget()
        if self.child.killed:
            raise AssertionError(f"tcpaccept ignored {signal.Signals(sig).name} for "
                                 f"{timeout} s\n{self.stdout}{self.stderr}")
        return self

    def _forget(self) -> None:
        if self in RUNNING:
            RUNNING.remove(self)

    def events(self, pids: Optional[Iterable[int]] = None) -> list[dict]:
        """Accept events (JSON mode), only those of `pids` when given: the machine may
        have other traffic, the test asserts exactly what its own processes did."""
        assert self.json_mode
        wanted = set(pids) if pids is not None else None
        return [e for e in map(_parse_json, self.lines) if e.get("event") == "accept"
                and (wanted is None or e["pid"] in wanted)]


def _parse_json(line: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"not a JSON line ({exc}): {line!r}") from None


def start_tracer(*args: str, json_mode: bool = True, timeout: float = 30,
                 wrapper: Sequence[str] = (), probe: str = PROBE, env: Optional[dict] = None,
                 stdout: Output = subprocess.PIPE,
                 banner_stream: Optional[str] = None) -> TracerRun:
    """Start tcpaccept and return once it is attached (its banner has been printed).
    `wrapper` runs it under another command that execs it (setpriv, prlimit, unshare);
    `stdout` may be a file (a Path) or a descriptor the test holds (a pipe it reads
    slowly); the banner is on stderr in JSON mode and with -q (`banner_stream`)."""
    command = [*wrapper, *tcpaccept_command(*(("--json",) if json_mode else ()), *args,
                                            probe=probe)]
    child = Child(command, env=env, stdout=stdout)
    run = TracerRun(child, json_mode)
    RUNNING.append(run)
    banner_stream = banner_stream or ("stderr" if json_mode else "stdout")
    try:
        child.wait_for_text(BANNER, banner_stream, timeout)
    except ChildError as exc:
        child.stop(signal.SIGKILL)
        run._forget()
        raise AssertionError(f"tcpaccept did not start: {exc}\n{child.text('stdout')}"
                             f"{child.text('stderr')}") from None
    run.programs = leftovers.record_programs(child.pid)
    return run


def stop_leftover_tracers(spare: Iterable[TracerRun] = ()) -> list[str]:
    """Stop every tracer a test left running, except `spare` (those of module- or
    session-scoped fixtures, which stop them themselves); their command lines. (One that
    exited by itself, or that the test ended another way, is only reaped.)"""
    left = []
    for run in [run for run in RUNNING if run not in set(spare)]:
        if run.proc.poll() is None:
            left.append(" ".join(run.child.argv))
        run.child.stop(signal.SIGINT, timeout=20)
        run._forget()
    return left
