"""Runs the real tcpaccept command as a child process and reads what it printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Iterable, Optional

from tests.support.child import Child, ChildError

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


def tcpaccept_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tcpaccept.cli", "--probe", PROBE, *args]


class TracerRun:
    """A running tcpaccept; reader threads keep everything it prints on both streams."""

    def __init__(self, child: Child, json_mode: bool) -> None:
        self.child = child
        self.proc = child.proc
        self.json_mode = json_mode

    @property
    def returncode(self) -> Optional[int]:
        return self.child.returncode

    @property
    def stdout(self) -> str:
        return self.child.text("stdout")

    @property
    def stderr(self) -> str:
        return self.child.text("stderr")

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
        if self.child.killed:
            raise AssertionError(f"tcpaccept ignored {signal.Signals(sig).name} for "
                                 f"{timeout} s\n{self.stdout}{self.stderr}")
        return self

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


def start_tracer(*args: str, json_mode: bool = True, timeout: float = 30) -> TracerRun:
    """Start tcpaccept and return once it is attached (its banner has been printed)."""
    child = Child(tcpaccept_command(*(("--json",) if json_mode else ()), *args))
    try:
        child.wait_for_text(BANNER, "stderr" if json_mode else "stdout", timeout)
    except ChildError as exc:
        child.stop(signal.SIGKILL)
        raise AssertionError(f"tcpaccept did not start: {exc}\n{child.text('stdout')}"
                             f"{child.text('stderr')}") from None
    return TracerRun(child, json_mode)
