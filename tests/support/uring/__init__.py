"""liburing programs for the io_uring tests and benchmark, built by the tests themselves.

The C sources sit next to this file; `binary(name)` compiles one with gcc against Debian's
liburing-dev into build/ here (git-ignored) and reuses it while the source is unchanged.
They are linked statically, so the VM guests (which have neither gcc nor liburing) can run
what the host built: the project tree is shared with them at the same path. Each machine's
build has its own directory (build/x86_64/, build/aarch64/): the arm64 guests run the one
the host cross-compiled with aarch64-linux-gnu-gcc against an arm64 liburing.
A missing compiler or library is an error, never a skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

SOURCE_DIR = Path(__file__).resolve().parent
BUILD_DIR = SOURCE_DIR / "build"
MODES = ("single", "multishot", "direct-alloc", "direct-slot", "async", "sqpoll", "overflow")


class UringUnsupported(Exception):
    """The running kernel refused an io_uring operation or flag (EINVAL)."""


def binary(name: str, machine: str = "", liburing: Optional[Path] = None) -> Path:
    """The compiled program `name` (from name.c) for `machine` (default: this one), built now
    if missing or stale. Another machine's is cross-compiled with <machine>-linux-gnu-gcc
    against the liburing unpacked under `liburing` (its usr/include, usr/lib/<triplet>)."""
    machine = machine or platform.machine()
    source = SOURCE_DIR / f"{name}.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    target = BUILD_DIR / machine / f"{name}-{digest}"
    if target.exists():
        return target
    flags: list[str] = []
    if machine == platform.machine():
        compiler = shutil.which("gcc") or shutil.which("cc")
    else:
        compiler = shutil.which(f"{machine}-linux-gnu-gcc")
        if liburing is None:
            raise AssertionError(f"{name} for {machine}: no liburing for it was given")
        flags = [f"-I{liburing}/usr/include", f"-L{liburing}/usr/lib/{machine}-linux-gnu"]
    if compiler is None:
        raise AssertionError(f"no C compiler to build {source.name} for {machine}; install gcc "
                             "and liburing-dev (or build on the host first: the guests share it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    built = subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-static", *flags, "-o", str(partial),
         str(source), "-luring"],
        capture_output=True, text=True,
    )
    if built.returncode != 0:
        raise AssertionError(f"cannot build {source.name} (is liburing-dev installed?):\n"
                             f"{built.stderr}")
    partial.replace(target)  # atomic: parallel builders never run a half-written file
    return target


@dataclass
class UringServer:
    """A running accept_server: listening, accepting through io_uring in one mode."""

    proc: subprocess.Popen
    mode: str
    family: int  # 4 or 6
    host: str
    comm: str
    n: int
    port: int
    pid: int
    listen_fd: int
    result: dict = field(default_factory=dict)
    # Its threads once every accept completed: the submitter and any io-wq (iou-wrk-N) or
    # SQPOLL (iou-sqp-N) worker that may have run one (an idle worker lives on for 5 s).
    threads: set[int] = field(default_factory=set)

    def _read(self) -> dict:
        assert self.proc.stdout
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"accept_server {self.mode} exited (rc={self.proc.wait()})")
        message = json.loads(line)
        if "unsupported" in message:
            raise UringUnsupported(message["unsupported"])
        if "error" in message:
            raise AssertionError(f"accept_server {self.mode}: {message['error']}")
        return message

    def wait_armed(self) -> None:
        """Overflow and prearmed servers: every accept is in flight."""
        assert self._read() == {"armed": True}

    def reap(self) -> None:
        """Overflow mode: start reaping completions (until then they pile up)."""
        self._send("reap")

    def wait_accepted(self) -> dict:
        """{"accepted": N, "fds": [...], "overflowed": bool} once N accepts completed."""
        self.result = self._read()
        assert self.result.get("accepted") == self.n, self.result
        self.threads = {int(tid) for tid in os.listdir(f"/proc/{self.pid}/task")}
        return self.result

    def _send(self, line: str) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """Tear the ring down (cancelling any armed multishot accept) and exit."""
        if self.proc.poll() is None:
            try:
                self._send("quit")
                self.proc.wait(5)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> UringServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_uring_server(mode: str, family: int, host: str, n: int,
                       comm: Optional[str] = None, port: int = 0,
                       prearmed: bool = False) -> UringServer:
    """Listen on host:port (0: chosen by the kernel); accepts n connections via io_uring.
    prearmed: every accept is armed at once before any connection (wait_armed says when;
    n <= 64)."""
    if mode not in MODES or (prearmed and mode == "overflow"):
        raise ValueError(f"unknown io_uring server mode {mode!r}")
    comm = comm or f"uring-{mode}"[:15]
    argv = [str(binary("accept_server")), f"prearmed-{mode}" if prearmed else mode,
            str(family), host, comm, str(n), str(port)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    server = UringServer(proc, mode, family, host, comm, n, 0, 0, -1)
    try:
        hello = server._read()
    except BaseException:
        server.close()
        raise
    server.port, server.pid, server.listen_fd = hello["port"], hello["pid"], hello["listen_fd"]
    return server
