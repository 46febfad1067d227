"""Output hardening (issue 14 items 1-2), through the real command under real accept load:

- a reader that stops reading cannot hold the tracer: SIGTERM ends it within 1 s, its BPF
  programs are gone, and the events it could not write are counted on stderr;
- a full filesystem is one line `tcpaccept: cannot write output: ...`, exit 1, no
  traceback, no half line in the file;
- a latin-1 stdout and a process named `nginx→` is no traceback.

The CLI tests need the OutputWriter (src/tcpaccept/output/writer.py) wired into the line
sinks; the writer-level test below needs nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from tcpaccept.output.writer import OutputError, OutputWriter
from tests.support.leftovers import program_loaded
from tests.support.tracer import TracerRun, start_tracer, tcpaccept_command

pytestmark = [pytest.mark.kernel, pytest.mark.host_only]  # load against a stalled reader

OUTPUT_ERROR = re.compile(
    r"^tcpaccept: cannot write output: No space left on device \((\d+) events not written\)$")
STALLED = re.compile(r"^Lost (\d+) events \(output stalled\)$", re.MULTILINE)
LOST = re.compile(r"^Lost (\d+) events(?: \(output stalled\))?$", re.MULTILINE)
LOST_TOTAL = re.compile(r"^Lost (\d+) events in total$", re.MULTILINE)

# Accepts as fast as one process can: a thread accepts and closes, the main thread
# connects and closes. Prints its port, runs until killed.
LOAD = textwrap.dedent("""
    import socket, threading
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    def accept_forever():
        while True:
            server.accept()[0].close()
    threading.Thread(target=accept_forever, daemon=True).start()
    print(server.getsockname()[1], flush=True)
    while True:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\1\\0\\0\\0\\0\\0\\0\\0")
        client.connect(("127.0.0.1", server.getsockname()[1]))
        client.close()
""")


@contextlib.contextmanager
def tiny_tmpfs(size: str = "64k") -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="tcpaccept-enospc-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


@contextlib.contextmanager
def accept_load() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", LOAD], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def finish(tracer: TracerRun) -> None:
    """Kill it if it still runs (the tests below judge how it ended themselves)."""
    tracer.child.stop(signal.SIGKILL)


def test_the_writer_keeps_whole_lines_on_a_full_tmpfs_and_counts_the_rest() -> None:
    line = json.dumps({"event": "accept", "comm": "x" * 80}) + "\n"  # odd length: 99 bytes
    with tiny_tmpfs() as where:
        fd = os.open(where / "out.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        writer = OutputWriter(fd)
        sent = 0
        with pytest.raises(OutputError) as caught:
            for _ in range(200):
                writer.write_lines(line * 10, 10)
                sent += 10
                writer.flush(5.0)
        writer.close()
        os.close(fd)
        data = (where / "out.json").read_bytes()
    not_written = int(OUTPUT_ERROR.match(f"tcpaccept: {caught.value}").group(1))
    assert data.endswith(b"\n"), "a half line was left in the file"
    assert not_written > 0
    assert data.count(b"\n") + not_written == sent  # every line: in the file or counted
    assert len(data) <= 64 * 1024


def trickle(fd: int, stop_reading: threading.Event) -> threading.Thread:
    """A reader that is alive but slow: 4 KiB every 0.2 s (never idle long enough to look
    stalled, never fast enough to drain a full buffer)."""
    def read() -> None:
        while not stop_reading.is_set():
            with contextlib.suppress(OSError):
                os.read(fd, 4096)
            time.sleep(0.2)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("reader", ["stalled", "slow"])
def test_a_stalled_reader_cannot_hold_the_tracer_past_sigterm(reader: str) -> None:
    read_end, write_end = os.pipe()  # the test holds the read end: never reads, or slowly
    stop_reading = threading.Event()
    with accept_load() as port:
        tracer = start_tracer("-P", str(port), stdout=write_end)
        os.close(write_end)
        programs = tracer.programs  # its own, by its fds
        if reader == "slow":
            trickle(read_end, stop_reading)
        try:
            assert programs, "positive control: the running tracer holds BPF programs"
            # The pipe (64 KiB) and then the output buffer fill; the loss is reported
            # while it happens, not only at the end.
            reported = wait_for(lambda: STALLED.search(tracer.stderr) is not None, 30)
            start_stop = time.monotonic()
            tracer.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                tracer.proc.wait(5)
            took = time.monotonic() - start_stop
        finally:
            stop_reading.set()
            finish(tracer)
            time.sleep(0.3)  # the trickle thread's last read
            os.close(read_end)
    assert took < 1.0, f"tcpaccept took {took:.2f} s to end after SIGTERM ({reader} reader)"
    assert reported, f"no 'Lost N events (output stalled)' while stalled:\n{tracer.stderr}"
    assert tracer.proc.returncode == 0, tracer.stderr
    assert "Traceback" not in tracer.stderr
    # Every loss it said while running adds up to the total it says at the end.
    (total,) = map(int, LOST_TOTAL.findall(tracer.stderr))
    assert sum(map(int, LOST.findall(tracer.stderr))) == total, tracer.stderr
    assert STALLED.search(tracer.stderr)
    left = [p for p in programs if program_loaded(p)]
    assert not left, f"BPF programs still loaded after exit: {left}"


def test_a_full_disk_is_one_line_and_exit_1() -> None:
    with tiny_tmpfs() as where, accept_load() as port:
        out_path = where / "out.json"
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        tracer = start_tracer("-P", str(port), stdout=out)
        os.close(out)
        try:
            tracer.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tcpaccept kept running on a full disk:\n{tracer.stderr}")
        finally:
            finish(tracer)
        data = out_path.read_bytes()
    err_lines = tracer.stderr.splitlines()
    errors = [line for line in err_lines if OUTPUT_ERROR.match(line)]
    assert len(errors) == 1, tracer.stderr
    assert int(OUTPUT_ERROR.match(errors[0]).group(1)) > 0
    assert "Traceback" not in tracer.stderr and "Error" not in tracer.stderr
    assert tracer.proc.returncode == 1
    assert data.endswith(b"\n"), "a half line was left in the file"
    for line in data.splitlines():
        json.loads(line)


NAMED = textwrap.dedent("""
    import ctypes, socket, sys
    ctypes.CDLL(None).prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    print(s.getsockname()[1], flush=True)
    kept = s.accept()
    sys.stdin.read()
""")


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_a_non_utf8_stdout_and_a_unicode_name_is_no_traceback(encoding: str,
                                                              tmp_path: Path) -> None:
    name = "nginx\u2192".encode()  # 8 bytes of UTF-8
    server = subprocess.Popen([sys.executable, "-c", NAMED, name.hex()],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout
        port = int(server.stdout.readline())
        assert Path(f"/proc/{server.pid}/comm").read_bytes() == name + b"\n"
        env = dict(os.environ, PYTHONIOENCODING=encoding)
        out_path = tmp_path / "out.txt"
        with start_tracer("-P", str(port), json_mode=False, stdout=out_path, env=env) as tracer, \
                socket.create_connection(("127.0.0.1", port), timeout=5):
            wait_for(lambda: f" {port} ".encode() in out_path.read_bytes()
                     or tracer.proc.poll() is not None, 10)
    finally:
        server.kill()
        server.wait()
    stdout = out_path.read_bytes().decode("ascii")  # backslash escapes: plain ASCII
    assert "Traceback" not in tracer.stderr, tracer.stderr
    assert tracer.returncode == 0, tracer.stderr
    rows = [line for line in stdout.splitlines() if f" {port} " in line]
    assert len(rows) == 1 and "nginx\\u2192" in rows[0], stdout


# -- the metrics endpoint (issue 14 item 5), through the command --

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, path: str = "/metrics", context=None) -> tuple[int, bytes]:
    import http.client

    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
            if context else http.client.HTTPConnection("127.0.0.1", port, timeout=5))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_agent(*args: str, nofile: int = 0, prefix: tuple[str, ...] = ()) -> TracerRun:
    """tcpaccept -q --metrics ...: the banner goes to stderr. nofile: an fd limit set by
    prlimit(1) on the command (not preexec_fn, unsafe in a threaded test process)."""
    if nofile:
        prefix = ("prlimit", f"--nofile={nofile}:{nofile}", *prefix)
    return start_tracer("-q", *args, json_mode=False, wrapper=prefix,
                        stdout=subprocess.DEVNULL, banner_stream="stderr")


def stop(run: TracerRun) -> Optional[int]:
    return run.stop().returncode


def test_a_thousand_idle_metrics_connections_leave_scrapes_answering_and_cpu_idle() -> None:
    port = free_port()
    # An fd limit well under the idle clients: the endpoint must bound itself, not spin.
    # -P on a port nobody uses: the host's other accept traffic costs the tracer nothing,
    # so what CPU it uses is the endpoint's.
    agent = start_agent("--metrics", f"127.0.0.1:{port}", "-P", str(free_port()), nofile=512)
    idle: list[socket.socket] = []
    limits = Path(f"/proc/{agent.proc.pid}/limits").read_text()
    assert re.search(r"^Max open files\s+512\s+512", limits, re.MULTILINE), limits
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 1400)), hard))
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(1000)]
        time.sleep(0.5)
        fds = len(os.listdir(f"/proc/{agent.proc.pid}/fd"))
        before = cpu_seconds(agent.proc.pid)
        time.sleep(2.0)
        idle_cpu = cpu_seconds(agent.proc.pid) - before
        statuses = [scrape(port)[0] for _ in range(5)]
        missing = scrape(port, "/favicon.ico")[0]
    finally:
        for sock in idle:
            sock.close()
        code = stop(agent)
    print(f"\n1000 idle metrics connections: tracer fds={fds}, CPU over 2 s={idle_cpu:.3f} s")
    assert statuses == [200] * 5
    assert missing == 404
    assert idle_cpu < 0.1, f"the tracer used {idle_cpu:.2f} s of CPU in 2 s with idle clients"
    assert fds < 200, fds
    assert code == 0, agent.stderr
    assert "Traceback" not in agent.stderr


def test_metrics_over_tls_with_a_certificate_made_by_openssl(tmp_path: Path) -> None:
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    with accept_load() as load_port:
        agent = start_agent("--metrics", f"127.0.0.1:{port}", "--metrics-tls-cert", str(cert),
                            "--metrics-tls-key", str(key), "-P", str(load_port))
        try:
            context = ssl.create_default_context(cafile=str(cert))
            assert wait_for(lambda: b"tcpaccept_accepts_total{" in
                            scrape(port, context=context)[1], 10)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
                plain.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                with contextlib.suppress(ConnectionResetError):
                    assert b"tcpaccept_accepts" not in plain.recv(65536)
        finally:
            code = stop(agent)
    assert code == 0, agent.stderr


def test_a_wildcard_metrics_bind_prints_one_warning_line() -> None:
    """In a fresh network namespace: 0.0.0.0 there reaches nobody while the test runs."""
    port = free_port()
    agent = start_agent("--metrics", f"0.0.0.0:{port}", prefix=("unshare", "--net"))
    code = stop(agent)
    warnings = [line for line in agent.stderr.splitlines() if "warning: --metrics" in line]
    assert len(warnings) == 1, agent.stderr
    assert warnings[0].startswith(f"tcpaccept: warning: --metrics 0.0.0.0:{port} ")
    assert "process names" in warnings[0]
    assert code == 0, agent.stderr


# -- issue 14 item 7: bad pinned maps exit 2, an empty CPU list is one line --

@pytest.fixture
def pinned_array() -> Iterator[str]:
    """A pinned BPF map of the wrong type for bcc's --cgroupmap (an array, 4-byte keys)."""
    path = f"/sys/fs/bpf/tcpaccept-test-array-{os.getpid()}"
    subprocess.run(["bpftool", "map", "create", path, "type", "array", "key", "4", "value",
                    "8", "entries", "1", "name", "tcpa_test_arr"], check=True)
    try:
        yield path
    finally:
        os.unlink(path)


@pytest.mark.parametrize("which", ["wrong map type", "not a map"])
def test_a_bad_pinned_map_is_one_line_and_exit_2(pinned_array: str, which: str) -> None:
    path = pinned_array if which == "wrong map type" else "/etc/hostname"
    result = subprocess.run(tcpaccept_command("--cgroupmap", path), capture_output=True,
                            text=True, timeout=60)
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"tcpaccept: --cgroupmap {path}: "), result.stderr
    assert result.returncode == 2, result.stderr


def test_an_empty_cpu_list_is_one_line() -> None:
    """/sys/devices/system/cpu/possible replaced by an empty file, in a private mount
    namespace: the tracer must say so in one line, not with a traceback."""
    with tempfile.NamedTemporaryFile() as empty:
        script = (f"mount --bind {empty.name} /sys/devices/system/cpu/possible && "
                  f"exec {' '.join(tcpaccept_command('-d', '1'))}")
        result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                 script], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcpaccept: "), result.stderr
    assert "/sys/devices/system/cpu/possible" in lines[0]
    assert result.returncode != 0


def test_event_times_are_right_inside_a_time_namespace() -> None:
    """The tracer's CLOCK_MONOTONIC a day ahead of the kernel's (`unshare --time`): event
    times must still be now, not a day off (issue 14 item 7)."""
    import datetime

    with accept_load() as port, \
            start_tracer("-P", str(port), "-n", "5",
                         wrapper=["unshare", "--time", "--monotonic", "86400"]) as tracer:
        tracer.proc.wait(30)
    events = tracer.events()
    assert tracer.returncode == 0, tracer.stderr
    assert len(events) == 5, events
    now = datetime.datetime.now().astimezone()
    for event in events:
        shown = datetime.datetime.fromisoformat(event["time"])
        assert abs((now - shown).total_seconds()) < 30, (event["time"], now.isoformat())
