"""Issue 12 item 2: the tracepoint's two accept programs (BTF pointer walk, probe reads)
report the same accepts with the same fields, through the real kernel.

Both run on this host: TCPACCEPT_ACCEPT_PROGRAM=probe-read forces the older one; without
it the tracer takes the BTF walk wherever the kernel offers it (6.2+), as --verbose says.
Every field is checked against what the sockets and /proc say, for accept() and accept4(),
IPv4 and IPv6."""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from pathlib import Path
from typing import Optional

import pytest

from tcpaccept import libbpf, probes
from tcpaccept.event import OBJECT_ENV
from tests.support.bpf_variants import build_variant, replace
from tests.support.tracer import start_tracer

_libc = ctypes.CDLL(None, use_errno=True)


def expected_program() -> str:
    """What auto must choose here: the BTF walk where the kernel offers it."""
    saved_regs = libbpf.probe_helper(libbpf.BPF_PROG_TYPE_TRACEPOINT,
                                     probes.BPF_FUNC_TASK_PT_REGS)
    return "btf-walk" if probes.btf_walk_unusable(saved_regs) is None else "probe-read"


def own_cgroup_id() -> int:
    """The cgroup v2 id of this process: its cgroup directory's inode number."""
    with open("/proc/self/cgroup") as f:
        path = next(line.split("::", 1)[1].strip() for line in f if line.startswith("0::"))
    return os.stat(Path("/sys/fs/cgroup") / path.lstrip("/")).st_ino


def accept_with(listener: socket.socket, syscall: str) -> int:
    """Accept one connection with accept4() (Python's) or plain accept() (libc's)."""
    if syscall == "accept4":
        conn, _ = listener.accept()
        return conn.detach()
    fd = _libc.accept(listener.fileno(), None, None)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    return fd


def traffic(family: int, host: str, source: Optional[str]) -> tuple[list[dict], list[int]]:
    """Three clients queue up, then are accepted one by one: with accept4 twice, then
    accept. Returns what each accept must report, and the fds to close."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(16)
    clients = []
    for _ in range(3):
        c = socket.socket(family, socket.SOCK_STREAM)
        if source:
            c.bind((source, 0))
        c.connect(listener.getsockname()[:2])
        clients.append(c)
    truth, fds = [], []
    for i, syscall in enumerate(("accept4", "accept4", "accept")):
        fd = accept_with(listener, syscall)
        fds.append(fd)
        peer = socket.socket(fileno=os.dup(fd))
        raddr, rport = peer.getpeername()[:2]
        laddr, lport = peer.getsockname()[:2]
        peer.close()
        truth.append({"raddr": raddr, "rport": rport, "laddr": laddr, "lport": lport,
                      "fd": fd, "listen_fd": listener.fileno(), "backlog": 2 - i,
                      "backlog_max": 16})
    fds += [c.detach() for c in clients] + [listener.detach()]
    return truth, fds


@pytest.mark.parametrize("program", ["auto", "probe-read"])
def test_both_accept_programs_report_every_field(
        program: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if program != "auto":
        monkeypatch.setenv(probes.ACCEPT_PROGRAM_ENV, program)
    chosen = expected_program() if program == "auto" else program
    # The tracepoint method whatever the matrix forces: its two programs are compared here
    # (the last --probe wins).
    run = start_tracer("--probe", "tracepoint", "-v", "-p", str(os.getpid()))
    fds: list[int] = []
    try:
        want = []
        for family, host, source in ((socket.AF_INET, "127.0.0.1", "127.0.0.2"),
                                     (socket.AF_INET6, "::1", None)):
            truth, opened = traffic(family, host, source)
            want += truth
            fds += opened
    finally:
        run.stop()
        for fd in fds:
            os.close(fd)
    assert f"accept program: {chosen}" in run.stderr, run.stderr
    events = run.events([os.getpid()])
    assert len(events) == len(want), events
    comm = Path("/proc/self/comm").read_text().strip()
    common = {"pid": os.getpid(), "tid": threading.get_native_id(), "uid": os.geteuid(),
              "comm": comm, "netns": os.stat("/proc/self/ns/net").st_ino,
              "cgroup_id": own_cgroup_id()}
    by_rport = {e["rport"]: e for e in events}
    for expected in want:
        event = by_rport[expected["rport"]]
        got = {key: event[key] for key in (*expected, *common)}
        assert got == {**expected, **common}, event


@pytest.mark.host_only  # clang
def test_a_refused_btf_walk_falls_back_to_probe_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel whose verifier refuses the BTF walk (built here with a load it must
    refuse) still traces, with the probe-read program, and --verbose says why."""
    if expected_program() != "btf-walk":
        pytest.fail("this kernel does not offer the BTF walk: nothing to fall back from")
    refused = build_variant(tmp_path, {"tcpaccept.bpf.c": replace(
        "\tstruct task_struct *task = untrusted_task(current);\n\t__s32 fd = (__s32)ctx->ret;\n",
        "\tstruct task_struct *task = untrusted_task(current);\n\t__s32 fd = (__s32)ctx->ret;\n"
        "\n\tif (fd == 123456789) /* a load through a plain number: never verifiable */\n"
        "\t\treturn *(int *)(long)ctx->ret;\n")})
    monkeypatch.setenv(OBJECT_ENV, str(refused))
    run = start_tracer("--probe", "tracepoint", "-v", "-p", str(os.getpid()))
    fds: list[int] = []
    try:
        truth, fds = traffic(socket.AF_INET, "127.0.0.1", None)
    finally:
        run.stop()
        for fd in fds:
            os.close(fd)
    assert "accept program btf-walk not usable: " in run.stderr, run.stderr
    assert "accept program: probe-read" in run.stderr, run.stderr
    assert sorted(e["rport"] for e in run.events([os.getpid()])) == \
        sorted(t["rport"] for t in truth)
