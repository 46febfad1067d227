"""Names chosen by the traced system are untrusted (issue 11 item 3): a process that names
itself with an escape sequence and a newline must not colour the terminal or forge a row
in text output, and JSON must carry the name exactly. Also the cgroup path (-x)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpaccept.output.escape import escape_text
from tests.support.containers import cgroup2_mount
from tests.support.tracer import start_tracer

pytestmark = [pytest.mark.kernel, pytest.mark.method_agnostic]  # output escaping

HOSTILE = b"\x1b[31mEV\nX 1"  # 11 bytes: colours the terminal red, then a forged line
HOSTILE_SHOWN = "\\x1b[31mEV\\nX 1"
INVALID_UTF8 = b"bad\xff\xfename"

# Names itself with the raw bytes (hex on argv), optionally moves into a cgroup, listens,
# prints its port, accepts N connections, then waits for stdin to close.
NAMED_SERVER = textwrap.dedent("""
    import ctypes, os, socket, sys
    name, count, cgroup = bytes.fromhex(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
    if ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0) != 0:  # PR_SET_NAME
        sys.exit("prctl failed")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    print(s.getsockname()[1], flush=True)
    kept = [s.accept()[0] for _ in range(count)]
    print("accepted", flush=True)
    sys.stdin.read()
""")


@contextlib.contextmanager
def named_server(name: bytes, count: int = 1, cgroup: str = "") -> Iterator[tuple[int, int]]:
    proc = subprocess.Popen([sys.executable, "-c", NAMED_SERVER, name.hex(), str(count), cgroup],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout
        port = int(proc.stdout.readline())
        comm = Path(f"/proc/{proc.pid}/comm").read_bytes().rstrip(b"\n")
        assert comm == name[:15], comm  # positive control: the kernel holds the raw name
        yield proc.pid, port
    finally:
        proc.kill()
        proc.wait()


def accept_once(pid: int, port: int, proc_stdout_wait: float = 0.2) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        time.sleep(proc_stdout_wait)


def test_text_output_shows_a_hostile_name_escaped_on_one_line() -> None:
    with named_server(HOSTILE) as (pid, port):
        tracer = start_tracer("-P", str(port), json_mode=False)
        try:
            accept_once(pid, port)
            tracer.wait_for_lines(3)
        finally:
            tracer.stop()
    assert tracer.returncode == 0, tracer.stderr
    out = tracer.stdout
    assert "\x1b" not in out, "a raw escape reached the terminal"
    rows = [line for line in out.splitlines() if f" {port} " in line]
    assert len(rows) == 1, out
    fields = rows[0].split()
    assert fields[1] == str(pid)
    assert HOSTILE_SHOWN in rows[0], rows[0]
    assert not any(line.startswith("X 1") for line in out.splitlines()), "a forged row"


def test_json_output_round_trips_a_hostile_name() -> None:
    with named_server(HOSTILE) as (pid, port):
        tracer = start_tracer("-P", str(port))
        try:
            accept_once(pid, port)
            tracer.wait_for_lines(1)
        finally:
            tracer.stop()
    assert tracer.returncode == 0, tracer.stderr
    assert "\x1b" not in tracer.stdout
    events = tracer.events([pid])
    assert [e["comm"] for e in events] == [HOSTILE.decode()]
    assert json.loads(json.dumps(events[0])) == events[0]


def test_invalid_utf8_is_escaped_in_text_and_lossless_in_json() -> None:
    """Needs the decoder to keep the bytes (errors="surrogateescape"): text shows \\xff,
    JSON carries \\udcff, which Python reads back to the original bytes."""
    with named_server(INVALID_UTF8) as (pid, port):
        text = start_tracer("-P", str(port), json_mode=False)
        jsn = start_tracer("-P", str(port))
        try:
            accept_once(pid, port)
            text.wait_for_lines(2)
            jsn.wait_for_lines(1)
        finally:
            text.stop()
            jsn.stop()
    assert text.returncode == 0 and jsn.returncode == 0, text.stderr + jsn.stderr
    rows = [line for line in text.stdout.splitlines() if f" {port} " in line]
    assert len(rows) == 1 and "bad\\xff\\xfename" in rows[0], text.stdout
    (event,) = jsn.events([pid])
    assert event["comm"].encode("utf-8", "surrogateescape") == INVALID_UTF8


@pytest.fixture
def hostile_cgroup() -> Iterator[str]:
    root = Path(cgroup2_mount())
    # The kernel refuses a newline in a cgroup name; an escape, a tab, a backslash pass.
    path = root / f"tcpaccept-test-{uuid.uuid4().hex[:8]}\x1b[31mred\tx\\y"
    path.mkdir()
    try:
        assert (path / "cgroup.controllers").exists(), f"{root} is not a cgroup v2 mount"
        yield str(path)
    finally:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_extended_output_escapes_a_hostile_cgroup_path(hostile_cgroup: str) -> None:
    with named_server(b"cgsrv", cgroup=hostile_cgroup) as (pid, port):
        tracer = start_tracer("-x", "-P", str(port), json_mode=False)
        try:
            accept_once(pid, port)
            tracer.wait_for_lines(2)
        finally:
            tracer.stop()
    assert tracer.returncode == 0, tracer.stderr
    assert "\x1b" not in tracer.stdout
    rows = [line for line in tracer.stdout.splitlines() if f" {port} " in line]
    assert len(rows) == 1, tracer.stdout
    shown = escape_text(os.path.basename(hostile_cgroup))
    assert shown.endswith("\\x1b[31mred\\tx\\\\y"), shown  # the test's own expectation
    assert rows[0].endswith(shown), rows[0]


def test_summary_tables_escape_a_hostile_name() -> None:
    with named_server(HOSTILE) as (pid, port):
        tracer = start_tracer("-s", "0.5", "-P", str(port), json_mode=False)
        try:
            accept_once(pid, port, proc_stdout_wait=1.2)  # one interval's table at least
        finally:
            tracer.stop()
    assert tracer.returncode == 0, tracer.stderr
    assert "\x1b" not in tracer.stdout, "a raw escape reached the terminal"
    rows = [line for line in tracer.stdout.splitlines() if f":{port} " in line]
    # One accept, in one interval: its table row and its latency histogram's title.
    assert len(rows) == 2 and all(HOSTILE_SHOWN in row for row in rows), tracer.stdout
    assert rows[1].startswith(f"queue latency, listener 127.0.0.1:{port} "), rows
    assert not any(line.startswith("X 1") for line in tracer.stdout.splitlines())
