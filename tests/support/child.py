"""One child process (tcpaccept, the bpftrace peer, ...): start it, wait until it is ready,
stop it with a signal until it exits, and keep what it printed.

Shared by the tests (tests/support/tracer.py) and the benchmark (bench/), so that "send
SIGINT until it exits" and "drain its pipes so it never blocks on a full one" exist once.
Each stream is captured (PIPE: reader threads keep every line with its arrival time),
written to a file (a Path: large outputs the bench counts afterwards) or discarded
(DEVNULL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Callable, Optional, Sequence, Union

Output = Union[int, Path]  # subprocess.PIPE, subprocess.DEVNULL or a file to write
STREAMS = ("stdout", "stderr")


class ChildError(Exception):
    """The child exited before it was ready, or was not ready in time."""


def free_port() -> int:
    """A TCP port nothing holds right now on any address of either family, so that a
    listener on [::] (the DaemonSet's --metrics [::]:PORT, dual-stack) can take it too: a
    pick made on 127.0.0.1 cannot see a port held on IPv6 (EADDRINUSE seen twice, beside
    13,000 sockets a load test left). IPv4 alone where IPv6 is off."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 0))
            return s.getsockname()[1]
    except OSError:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def peak_rss_kb(pid: int) -> Optional[int]:
    """VmHWM of a running process, in kB (None once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


class Child:
    """A started child. `stop()` is idempotent and always reaps it (SIGKILL as a last resort,
    and then `killed` is True); call it in a `finally`."""

    def __init__(self, argv: Sequence[str], *, stdout: Output = subprocess.PIPE,
                 stderr: Output = subprocess.PIPE, env: Optional[dict] = None,
                 new_session: bool = False) -> None:
        self.argv = list(argv)
        self.paths: dict[str, Optional[Path]] = {}
        self._lines: dict[str, list[tuple[float, str]]] = {name: [] for name in STREAMS}
        self._readers: list[threading.Thread] = []
        self.returncode: Optional[int] = None
        self.maxrss_kb: Optional[int] = None  # from wait4, when stop() reaped it
        self.hwm_kb: Optional[int] = None  # VmHWM read just before the stop signal
        self.killed = False
        with contextlib.ExitStack() as files:
            handles: dict[str, Union[int, IO[bytes]]] = {}
            for name, target in (("stdout", stdout), ("stderr", stderr)):
                if isinstance(target, Path):
                    handles[name] = files.enter_context(open(target, "wb"))
                    self.paths[name] = target
                else:
                    handles[name] = target
                    self.paths[name] = None
            self.started = time.monotonic()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=handles["stdout"], stderr=handles["stderr"],
                                         env=env, start_new_session=new_session)
        for name in STREAMS:
            stream = getattr(self.proc, name)
            if stream is not None:
                reader = threading.Thread(target=self._drain, args=(stream, self._lines[name]),
                                          daemon=True)
                reader.start()
                self._readers.append(reader)

    @staticmethod
    def _drain(stream: IO[bytes], into: list[tuple[float, str]]) -> None:
        for raw in stream:
            into.append((time.monotonic(), raw.decode(errors="replace")))
        stream.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name

    # ----------------------------------------------------------------------- what it printed

    def text(self, stream: str = "stdout") -> str:
        """Everything printed on `stream` so far (a file's content for a file stream)."""
        path = self.paths[stream]
        if path is not None:
            with contextlib.suppress(OSError):
                return path.read_text(errors="replace")
            return ""
        return "".join(line for _, line in self._lines[stream])

    def head(self, stream: str, limit: int = 4096) -> str:
        """The first `limit` bytes of `stream`: cheap on a file tens of MB long."""
        path = self.paths[stream]
        if path is None:
            return self.text(stream)[:limit]
        with contextlib.suppress(OSError), open(path, "rb") as f:
            return f.read(limit).decode(errors="replace")
        return ""

    # -------------------------------------------------------------------------------- ready

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 20) -> float:
        """Poll `ready()` until true; seconds from exec. ChildError if the child exits or
        `timeout` passes first."""
        deadline = self.started + timeout
        while True:
            if ready():
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                for reader in self._readers:  # its last words, for the message
                    reader.join(2)
                raise ChildError(f"{self.name} exited with {self.proc.returncode} before "
                                 f"{what}: {self.text('stderr').strip()[-400:]}")
            if time.monotonic() > deadline:
                raise ChildError(f"{self.name}: no {what} after {timeout:.0f} s: "
                                 f"{self.text('stderr').strip()[-400:]}")
            time.sleep(0.01)

    def wait_for_line(self, wanted: Callable[[str], bool], stream: str = "stdout",
                      what: str = "expected line", timeout: float = 20) -> float:
        """Wait for a captured line for which `wanted(line)` is true; seconds from exec to
        its arrival (the reader thread's timestamp, not the time of this check)."""
        found: list[float] = []

        def seen() -> bool:
            for arrived, line in self._lines[stream]:
                if wanted(line.rstrip("\n")):
                    found.append(arrived)
                    return True
            return False

        self.wait_until(seen, what, timeout)
        return found[0] - self.started

    def wait_for_text(self, text: str, stream: str = "stdout", timeout: float = 20) -> float:
        """Wait until `text` was printed on `stream` (a banner); seconds from exec."""
        return self.wait_until(lambda: text in self.head(stream), repr(text), timeout)

    # --------------------------------------------------------------------------------- stop

    def stop(self, sig: int = signal.SIGINT, *, resend_every: Optional[float] = None,
             settle: float = 0.0, timeout: float = 15.0) -> int:
        """Send `sig` (again every `resend_every` s if given: bpftrace can miss one while it
        attaches) until the child exits; SIGKILL after `timeout`. `settle` s of grace
        before the signal let events already in flight reach it. Reads the child's
        ru_maxrss (wait4) and drains its pipes, so a full pipe never blocks its exit."""
        proc = self.proc
        if self.returncode is not None:
            return self.returncode
        if proc.returncode is None:  # not reaped yet (by a proc.wait() of the caller)
            if settle:
                time.sleep(settle)
            self.hwm_kb = peak_rss_kb(proc.pid)
            self._signal_until_exit(sig, resend_every, timeout)
        for reader in self._readers:
            reader.join(timeout)
        self.returncode = proc.returncode
        return proc.returncode

    def _signal_until_exit(self, sig: int, resend_every: Optional[float],
                           timeout: float) -> None:
        proc = self.proc
        deadline = time.monotonic() + timeout
        next_signal = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline and not self.killed:
                self.killed = True
                sig, next_signal = signal.SIGKILL, 0.0
            if now >= next_signal:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                next_signal = now + resend_every if resend_every else float("inf")
            try:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                proc.wait()
                return
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                self.maxrss_kb = usage.ru_maxrss
                return
            time.sleep(0.01)
