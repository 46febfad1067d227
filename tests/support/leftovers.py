"""What the tests started and must have ended by the end of the session: processes and
BPF programs. Measured as the tests' own, never "whatever is on this machine" (other
tracers, other test runs may share it):

- processes: every process the run starts inherits a marker in its environment
  (TCPACCEPT_TEST_RUN=<pytest pid>.<start ns>), children of children included, so the run
  finds its own by that value and nothing else;
- BPF programs: the ids the tests' tracers held, read through their own file descriptors
  (/proc/PID/fdinfo) while they ran, and any program the pytest process itself still holds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from pathlib import Path

MARKER_ENV = "TCPACCEPT_TEST_RUN"
# Every program id a test tracer held; the session-end check asks the kernel for each.
PROGRAMS_STARTED: set[int] = set()

_BPF_PROG_GET_FD_BY_ID = 13
_SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
_KINDS = {"prog": ("anon_inode:bpf-prog", "prog_id"), "map": ("anon_inode:bpf-map", "map_id")}


def mark_run() -> str:
    """Put this run's marker into the environment every later child inherits (a new one:
    a pytest started by a test checks its own children, not its parent's)."""
    os.environ[MARKER_ENV] = f"{os.getpid()}.{time.time_ns()}"
    return os.environ[MARKER_ENV]


def bpf_fdinfo(pid: int, kind: str = "prog") -> dict[int, dict[str, str]]:
    """id -> the fdinfo fields (prog_type, map_type, max_entries, ...) of each BPF program
    (or map) process `pid` holds open: its own, by its fds (one entry per id)."""
    link_text, key = _KINDS[kind]
    found = {}
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") != link_text:
                    continue
                text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                fields = {name: value.strip() for name, _, value in
                          (line.partition(":") for line in text.splitlines())}
                if key in fields:
                    found[int(fields[key])] = fields
    return found


def bpf_ids(pid: int, kind: str = "prog") -> set[int]:
    """Ids of the BPF programs (or maps) process `pid` holds open: its own, by its fds."""
    return set(bpf_fdinfo(pid, kind))


def descendants(pid: int) -> list[int]:
    """pid and every process below it (a wrapper such as `unshare --fork` runs the tracer
    as its child)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text()
                queue.extend(int(child) for child in children.split())
    return found


def record_programs(pid: int) -> set[int]:
    """Remember the programs a test's tracer (pid, or a process below it) holds, for the
    session-end check."""
    ids = set().union(*(bpf_ids(each, "prog") for each in descendants(pid)))
    PROGRAMS_STARTED.update(ids)
    return ids


def program_loaded(prog_id: int) -> bool:
    """Whether the kernel still has program `prog_id` (ids are not reused: idr_alloc_cyclic)."""
    attr = (ctypes.c_uint32 * 4)(prog_id, 0, 0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(_SYS_BPF, _BPF_PROG_GET_FD_BY_ID, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.close(fd)
        return True
    return ctypes.get_errno() != 2  # ENOENT: gone; anything else: cannot tell, say loaded


def marked_processes(marker: str) -> dict[int, str]:
    """pid -> command line of every live process carrying `marker` (this one excepted)."""
    wanted = f"{MARKER_ENV}={marker}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if wanted not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":  # exited, only waiting to be reaped
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            found[int(entry)] = cmdline.decode(errors="replace").strip()
    return found


def leftovers(marker: str, grace: float = 3.0) -> list[str]:
    """What the run left behind, one line each: its processes still alive after `grace`
    seconds (a process killed in a test's last moments may still be exiting), programs
    its tracers loaded that are still loaded, programs this process still holds."""
    deadline = time.monotonic() + grace
    while True:
        alive = marked_processes(marker)
        programs = sorted(i for i in PROGRAMS_STARTED if program_loaded(i))
        held = sorted(bpf_ids(os.getpid(), "prog"))
        if not (alive or programs or held) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return ([f"process {pid} still running: {cmd}" for pid, cmd in sorted(alive.items())]
            + [f"BPF program id {i} (loaded by a test tracer) still loaded" for i in programs]
            + [f"BPF program id {i} still held open by the pytest process" for i in held])
