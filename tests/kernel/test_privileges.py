"""Least privilege, measured: tcpaccept as uid 65534 (nobody) with exactly the capabilities
the README lists, through setpriv (bounding, inheritable and ambient sets all cut down).

tracefs is root-only here (0700 directory, 0440 files), so CAP_BPF + CAP_PERFMON cannot read
the syscall tracepoints' ids; the tracepoint method then attaches at the raw sys_exit
tracepoint (bpf/sys_exit.bpf.h). Positive controls: the capability sets really are the
ones named (read back from /proc/self/status under setpriv), the tracefs id really is
unreadable, and with CAP_DAC_READ_SEARCH added the tracefs ids are used again.

Older kernels made tracefs world-readable (0755/0644): there nobody reads the ids and the
syscall tracepoints attach through tracefs; the sys_exit programs are then exercised by
the root test that forces them (TCPACCEPT_TRACEPOINT_ATTACH=sys_exit). The tests force the
tracepoint method (the one this host has); the kernel matrix runs them once per kernel.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from typing import Callable, Sequence

import pytest

from tcpaccept import libbpf, probes
from tcpaccept.preflight import kernel_version
from tests.support import tracer as tracer_run
from tests.support.servers import connect, start_server
from tests.support.tracer import TracerRun

NOBODY = 65534
CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_PERFMON, CAP_BPF = 2, 19, 38, 39
TRACEFS_ID = "/sys/kernel/tracing/events/syscalls/sys_exit_accept4/id"
# setpriv users, podman, this host's tracefs and /proc permissions: the findings are about
# this host's set-up, not a kernel or a method (and --probe tracepoint throughout).
pytestmark = [pytest.mark.host_only, pytest.mark.method_agnostic]


def as_nobody(caps: Sequence[str], uid: int = NOBODY) -> list[str]:
    """setpriv prefix: uid/gid 65534 (or uid 0 as in the DaemonSet), no groups, exactly
    caps effective (via ambient; the bounding set caps what uid 0 gets at exec)."""
    wanted = ",".join(["-all"] + [f"+{c}" for c in caps])
    return ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups",
            "--inh-caps", wanted, "--ambient-caps", wanted, "--bounding-set", wanted]


def tcpaccept_as_nobody(caps: Sequence[str], *args: str, uid: int = NOBODY) -> list[str]:
    return [*as_nobody(caps, uid), sys.executable, "-m", "tcpaccept.cli", "--probe", "tracepoint",
            *args]


def nobody_reads_tracefs_ids() -> bool:
    return subprocess.run([*as_nobody(["bpf", "perfmon"]), "cat", TRACEFS_ID],
                          capture_output=True).returncode == 0


def accept_program() -> str:
    """The tracepoint program this kernel gets: btf-walk (6.2+) or probe-read."""
    saved_regs = libbpf.probe_helper(libbpf.BPF_PROG_TYPE_TRACEPOINT,
                                     probes.BPF_FUNC_TASK_PT_REGS)
    return "btf-walk" if probes.btf_walk_unusable(saved_regs) is None else "probe-read"


def sees_io_uring() -> bool:
    check = subprocess.run([sys.executable, "-m", "tcpaccept.cli", "--probe", "tracepoint",
                            "--check"], capture_output=True, text=True, timeout=60)
    return "io_uring accepts: yes" in check.stdout


def effective_caps_under(caps: Sequence[str]) -> tuple[int, int]:
    """(euid, CapEff) of a process started with as_nobody(caps): what capsh --print shows."""
    status = subprocess.run([*as_nobody(caps), "cat", "/proc/self/status"],
                            capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["Uid"].split()[1]), int(fields["CapEff"].strip(), 16)


def start_tracer(caps: Sequence[str], *args: str, uid: int = NOBODY,
                 wrapper: Sequence[str] = ()) -> TracerRun:
    """The shared runner (always stopped), JSON output, as `uid` with exactly `caps`."""
    return tracer_run.start_tracer(*args, wrapper=[*wrapper, *as_nobody(caps, uid)],
                                   probe="tracepoint")


def json_rows(child: TracerRun) -> list[dict]:
    return [json.loads(line) for line in child.text("stdout").splitlines() if line.strip()]


def warnings_of(child: TracerRun) -> list[str]:
    return [line for line in child.text("stderr").splitlines() if "warning" in line]


def test_setpriv_grants_exactly_the_named_capabilities() -> None:
    assert effective_caps_under(["bpf", "perfmon"]) == (NOBODY, 1 << CAP_BPF | 1 << CAP_PERFMON)
    assert effective_caps_under(["perfmon"]) == (NOBODY, 1 << CAP_PERFMON)
    # What the fallback exists for: where tracefs is root-only (this host: a 0700
    # directory), this user really cannot read the tracepoint's id.
    denied = subprocess.run([*as_nobody(["bpf", "perfmon"]), "cat", TRACEFS_ID],
                            capture_output=True, text=True)
    if not os.stat("/sys/kernel/tracing").st_mode & 0o001:
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
    with open(TRACEFS_ID) as tracepoint_id:  # tracefs is mounted: not the cause
        assert tracepoint_id.read().strip().isdigit()


def test_bpf_and_perfmon_alone_trace_a_real_accept_exactly() -> None:
    with start_server(comm="nobodysrv") as server:
        tracer = start_tracer(["bpf", "perfmon"], "-v", "-p", str(server.pid), "-n", "2")
        try:
            clients = [connect("127.0.0.1", server.port) for _ in range(2)]
            accepted = server.accept(2)
            assert tracer.proc.wait(20) == 0, tracer.text("stderr")
        finally:
            tracer.stop()
        for client in clients:
            client.close()
    stderr = tracer.text("stderr")
    assert "Traceback" not in stderr and "cannot mount" not in stderr
    at_sys_exit = not nobody_reads_tracefs_ids()
    assert (f"accept program: {accept_program()}" in stderr
            and ("at sys_exit" in stderr) == at_sys_exit), stderr
    rows = json_rows(tracer)
    seen = [(r["pid"], r["comm"], r["lport"], r["rport"], r["fd"], r["listen_fd"]) for r in rows]
    assert seen == [(server.pid, "nobodysrv", server.port, port, fd, server.listen_fd)
                    for _, port, fd in accepted]


def test_dac_read_search_lets_the_syscall_tracepoints_attach_through_tracefs() -> None:
    """The other way to grant it: tracefs readable, so no sys_exit fallback."""
    with start_server() as server:
        tracer = start_tracer(["bpf", "perfmon", "dac_read_search"], "-v",
                              "-p", str(server.pid), "-n", "1")
        try:
            client = connect("127.0.0.1", server.port)
            server.accept(1)
            assert tracer.proc.wait(20) == 0, tracer.text("stderr")
        finally:
            tracer.stop()
        client.close()
    stderr = tracer.text("stderr")
    assert f"accept program: {accept_program()}" in stderr and "sys_exit" not in stderr, stderr
    assert [r["pid"] for r in json_rows(tracer)] == [server.pid]


@pytest.mark.parametrize("caps, missing", [(["perfmon"], "CAP_BPF"),
                                           (["bpf"], "CAP_PERFMON"),
                                           ([], "CAP_BPF and CAP_PERFMON")])
def test_a_missing_capability_is_named_in_one_line(caps: list[str], missing: str) -> None:
    run = subprocess.run(tcpaccept_as_nobody(caps, "-d", "1"), capture_output=True,
                         text=True, timeout=30)
    lines = run.stderr.splitlines()
    assert run.returncode == 77 and len(lines) == 1, run.stderr
    assert f"missing: {missing} (" in lines[0] and "setcap cap_bpf,cap_perfmon+ep" in lines[0]


# accept() (syscall 43) next to Python's accept4() (288): both at sys_exit, both programs.
PLAIN_ACCEPT_SERVER = textwrap.dedent("""
    import ctypes, json, socket, sys
    libc = ctypes.CDLL(None, use_errno=True)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
    print(json.dumps([s.getsockname()[1], s.fileno()]), flush=True)
    sys.stdin.readline()
    fds = [libc.syscall(43, s.fileno(), None, None) for _ in range(2)]  # SYS_accept
    print(json.dumps(fds), flush=True)
    sys.stdin.readline()
""")


@pytest.mark.parametrize("program", ["btf-walk", "probe-read"])
def test_sys_exit_programs_report_accept_and_accept4_with_their_fds(program: str) -> None:
    env = dict(os.environ, TCPACCEPT_TRACEPOINT_ATTACH="sys_exit")
    if program == "probe-read":
        env["TCPACCEPT_ACCEPT_PROGRAM"] = "probe-read"
    plain = subprocess.Popen([sys.executable, "-c", PLAIN_ACCEPT_SERVER], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert plain.stdin and plain.stdout
    try:
        plain_port, plain_listen_fd = json.loads(plain.stdout.readline())
        with start_server() as server:
            tracer = tracer_run.start_tracer("-v", "-p", f"{server.pid},{plain.pid}", "-n", "4",
                                             probe="tracepoint", env=env)
            try:
                clients = [connect("127.0.0.1", plain_port) for _ in range(2)]
                plain.stdin.write("go\n")
                plain.stdin.flush()
                plain_fds = json.loads(plain.stdout.readline())
                clients += [connect("127.0.0.1", server.port) for _ in range(2)]
                accepted = server.accept(2)
                assert tracer.proc.wait(20) == 0, tracer.text("stderr")
            finally:
                tracer.stop()
            for client in clients:
                client.close()
    finally:
        plain.kill()
        plain.wait()
    expected = program if program == "probe-read" else accept_program()
    assert f"accept program: {expected}" in tracer.text("stderr")
    assert "at sys_exit" in tracer.text("stderr")
    rows = {(r["pid"], r["fd"], r["listen_fd"], r["lport"]) for r in json_rows(tracer)}
    assert rows == ({(plain.pid, fd, plain_listen_fd, plain_port) for fd in plain_fds}
                    | {(server.pid, fd, server.listen_fd, server.port) for _, _, fd in accepted})


def _overflow(port: int, count: int = 4) -> list[socket.socket]:
    """Connections a backlog-0 listener that never accepts cannot queue: they drop."""
    clients = []
    for _ in range(count):
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
        clients.append(client)
    return clients


def listener_sk_drops(port: int) -> int:
    """The listener's own drop counter (sk_drops, ss's skmem d): what --drops reports for
    it, whatever other listeners of this namespace (other tests, other tracers) drop."""
    out = subprocess.run(["ss", "-ltnmH", f"sport = :{port}"], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    (skmem,) = re.findall(r"skmem:\(([^)]*)\)", out)
    return int(next(f[1:] for f in skmem.split(",") if f.startswith("d")))


def _drops_as_nobody(caps: Sequence[str], uid: int = NOBODY) -> tuple[TracerRun, int, int]:
    """(the tracer, the server's pid, the listener's sk_drops) after an overflow."""
    with start_server(backlog=0, comm="dropsrv") as server:
        # Stopped by the test once the count is final, not by a -d timer: on a loaded
        # machine a fixed duration could end before the last drop (rows 9, sk_drops 15).
        tracer = start_tracer(caps, "--drops", "-P", str(server.port), uid=uid)
        clients = []
        try:
            clients = _overflow(server.port)
            _wait_steady(lambda: listener_sk_drops(server.port))
            # Closed SYN-SENT clients retransmit nothing: the count is final.
            for client in clients:
                client.close()
            _wait_steady(lambda: listener_sk_drops(server.port))
            dropped = listener_sk_drops(server.port)
        finally:
            tracer.stop()  # its last table read at exit reports every drop so far
            for client in clients:
                client.close()
        assert tracer.returncode == 0, tracer.text("stderr")
        assert listener_sk_drops(server.port) == dropped, "a drop after the tracer ended"
        return tracer, server.pid, dropped


def _wait_steady(read: Callable[[], int], timeout: float = 5.0) -> None:
    """Until read() is non-zero and unchanged for 100 ms (a deferred softirq)."""
    deadline, last = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        now = read()
        if now and now == last:
            return
        last = now
        time.sleep(0.1)
    raise AssertionError(f"no steady drop count in {timeout} s (last {last})")


def drop_rows(tracer: TracerRun) -> list[dict]:
    return [r for r in json_rows(tracer) if r["event"] == "drop"]


def test_drops_with_bpf_and_perfmon_alone_name_the_owner() -> None:
    """The listener table (issue 18): no CAP_SYS_PTRACE for owners, no warning about it;
    the same as uid 0 (the DaemonSet's set) and as uid 65534. Every drop of its listener,
    none lost, none invented."""
    for uid in (NOBODY, 0):
        tracer, server_pid, dropped = _drops_as_nobody(["bpf", "perfmon"], uid=uid)
        drops = drop_rows(tracer)
        assert sum(r["dropped"] for r in drops) == dropped > 0
        assert {(r["pid"], r["comm"]) for r in drops} == {(server_pid, "dropsrv")}
        stderr = tracer.text("stderr")
        assert "Traceback" not in stderr
        assert not [w for w in warnings_of(tracer) if "listener drops" in w], stderr


def _root_only_runtime_dirs() -> list[str]:
    """The runtimes' state directories present here that uid 65534 cannot list."""
    dirs = ["/run/containerd/io.containerd.runtime.v2.task", "/var/lib/docker/containers",
            "/run/containers/storage", "/var/lib/containers/storage"]
    return [d for d in dirs if os.path.isdir(d) and subprocess.run(
        [*as_nobody([]), "test", "-r", d, "-a", "-x", d]).returncode != 0]


def test_container_names_unreadable_are_said_once() -> None:
    expected = _root_only_runtime_dirs()
    tracer = start_tracer(["bpf", "perfmon"], "-d", "1")
    assert tracer.proc.wait(20) == 0, tracer.text("stderr")
    tracer.stop()
    names = [w for w in warnings_of(tracer) if "container names" in w]
    if expected:  # podman's state directories exist on the test host
        assert len(names) == 1 and all(d in names[0] for d in expected), tracer.text("stderr")
        assert "CAP_DAC_READ_SEARCH" in names[0]
    else:
        assert names == []
    with_dac = start_tracer(["bpf", "perfmon", "dac_read_search"], "-d", "1")
    assert with_dac.proc.wait(20) == 0
    with_dac.stop()
    assert not [w for w in warnings_of(with_dac) if "container names" in w]


def test_memlock_matters_only_before_5_11() -> None:
    """RLIMIT_MEMLOCK cannot be raised without CAP_SYS_RESOURCE. From 5.11 BPF memory is
    charged to the memory cgroup, so a small limit (64 KiB) must not matter; before, the
    maps do not fit and the failure must be one line, not a traceback."""
    limited = ["prlimit", "--memlock=65536:65536", "--"]
    if kernel_version() < (5, 11):
        run = subprocess.run([*limited, *tcpaccept_as_nobody(["bpf", "perfmon"], "-d", "1")],
                             capture_output=True, text=True, timeout=60)
        lines = run.stderr.splitlines()
        assert run.returncode != 0 and len(lines) == 1 and "Traceback" not in lines[0], lines
        return
    with start_server() as server:
        tracer = start_tracer(["bpf", "perfmon"], "-p", str(server.pid), "-n", "1",
                              wrapper=limited)
        try:
            client = connect("127.0.0.1", server.port)
            server.accept(1)
            assert tracer.proc.wait(20) == 0, tracer.text("stderr")
        finally:
            tracer.stop()
        client.close()
    assert [r["pid"] for r in json_rows(tracer)] == [server.pid]


@pytest.mark.parametrize("mode", ["single", "multishot"])
def test_io_uring_accepts_need_no_more_than_bpf_and_perfmon(mode: str) -> None:
    """The io_uring tp_btf programs (BTF walks, bpf_rdonly_cast) load and report as nobody."""
    from tests.support.uring import start_uring_server

    tracer = start_tracer(["bpf", "perfmon"], "-v")
    clients = []
    try:
        server = start_uring_server(mode, 4, "127.0.0.1", 3)
        try:
            clients = [connect("127.0.0.1", server.port) for _ in range(3)]
            ports = sorted(c.getsockname()[1] for c in clients)
            server.wait_accepted()
        finally:
            server.close()
        time.sleep(0.3)
    finally:
        tracer.stop()
        for client in clients:
            client.close()
    assert "io_uring" not in "".join(warnings_of(tracer)), tracer.text("stderr")
    rows = [r for r in json_rows(tracer) if r["pid"] == server.pid]
    if not sees_io_uring():  # before 6.2 (--check says): nothing invented either
        assert rows == []
        return
    assert sorted(r["rport"] for r in rows) == ports
    assert sorted(r["fd"] for r in rows) == sorted(server.result["fds"])


# As root in a private mount namespace: no tracefs anywhere; then drop to nobody.
UNMOUNT_THEN = """
for m in $(awk '$3 == "tracefs" || $3 == "debugfs" {print $2}' /proc/mounts | sort -r); do
  umount "$m" || exit 90
done
grep -qE ' (tracefs|debugfs) ' /proc/mounts && exit 91
exec "$@"
"""


def test_unmounted_tracefs_is_not_mounted_without_sys_admin() -> None:
    with start_server() as server:
        tracer = start_tracer(["bpf", "perfmon"], "-v", "-p", str(server.pid), "-n", "1",
                              wrapper=["unshare", "-m", "--propagation", "private", "sh", "-c",
                                       UNMOUNT_THEN, "sh"])
        try:
            client = connect("127.0.0.1", server.port)
            server.accept(1)
            assert tracer.proc.wait(20) == 0, tracer.text("stderr")
        finally:
            tracer.stop()
        client.close()
    stderr = tracer.text("stderr")
    assert "tracefs is not mounted, and mounting it needs CAP_SYS_ADMIN" in stderr, stderr
    assert "at sys_exit" in stderr and "cannot mount" not in stderr
    assert [r["pid"] for r in json_rows(tracer)] == [server.pid]


def test_an_unreadable_pinned_map_is_not_called_missing() -> None:
    pin = f"/sys/fs/bpf/tcpaccept_privileges_{os.getpid()}"
    subprocess.run(["bpftool", "map", "create", pin, "type", "hash", "key", "8", "value", "8",
                    "entries", "4", "name", "privtest"], check=True)
    try:
        run = subprocess.run(tcpaccept_as_nobody(["bpf", "perfmon"], "--cgroupmap", pin,
                                                 "-d", "1"), capture_output=True, text=True,
                             timeout=30)
    finally:
        os.unlink(pin)
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1, run.stderr
    assert f"'{pin}': permission denied" in run.stderr


def test_check_says_where_the_tracepoint_method_attaches() -> None:
    run = subprocess.run(tcpaccept_as_nobody(["bpf", "perfmon"], "--check"),
                         capture_output=True, text=True, timeout=60)
    line = next(x for x in run.stdout.splitlines() if x.startswith("tracepoint: "))
    if nobody_reads_tracefs_ids():
        assert line == "tracepoint: usable", run.stdout
    else:
        assert line.startswith("tracepoint: usable at sys_exit, not through tracefs ("), line
        assert TRACEFS_ID in line and "CAP_DAC_READ_SEARCH" in line
    assert run.returncode == 0, run.stderr


@pytest.mark.host_only  # podman
def test_container_ids_need_nothing_and_names_need_dac_read_search() -> None:
    from tests.support.containers import Podman, connect_in_netns, unique_name

    with Podman() as podman:
        container = podman.run(unique_name("priv"))
        # Only the container's accepts: an unfiltered tracer on a busy machine may lose
        # them to other traffic (output stalled).
        plain = start_tracer(["bpf", "perfmon"], "-p", str(container.pid))
        dac = start_tracer(["bpf", "perfmon", "dac_read_search"], "-p", str(container.pid))
        try:
            connect_in_netns(container.pid, count=2)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(
                    len([r for r in json_rows(t) if r["pid"] == container.pid]) == 2
                    for t in (plain, dac)):
                time.sleep(0.05)
        finally:
            plain.stop()
            dac.stop()
    for tracer, name in ((plain, None), (dac, container.name)):
        rows = [r for r in json_rows(tracer) if r["pid"] == container.pid]
        assert [(r["container_id"], r["container"]) for r in rows] == \
            [(container.id, name)] * 2, tracer.text("stderr")
