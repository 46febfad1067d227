"""Smoke tests of the qemu harness: each stock kernel boots and offers what the tracer's
attach methods need, and a known-good BPF tool (Debian's bpftrace) works inside."""

from __future__ import annotations

from pathlib import Path

import pytest
from guest import GuestResult, run_script

pytestmark = pytest.mark.vm

# Each check prints "check NAME RC"; the host asserts them one by one so that a failure
# names the missing piece instead of a bare non-zero exit.
CHECKS_SCRIPT = r"""
check() {
  local name=$1
  shift
  "$@" >/tmp/check.out 2>&1
  local rc=$?
  echo "check $name $rc"
  [ "$rc" = 0 ] || sed 's/^/  | /' /tmp/check.out
}
echo "uname $(uname -r)"
check btf test -e /sys/kernel/btf/vmlinux
check kprobe_pmu test -e /sys/bus/event_source/devices/kprobe
check tracefs test -e /sys/kernel/tracing/available_events
check bpffs grep -q ' /sys/fs/bpf bpf ' /proc/mounts
check cgroup2 grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts
check lo_up sh -c 'ip -o link show lo | grep -q "UP"'
check bpftool_progs bpftool prog list
check libbpf python3 -c 'import ctypes; ctypes.CDLL("libbpf.so.1")'
check tmp_writable sh -c 'echo x >/tmp/probe && rm /tmp/probe'
check modprobe modprobe veth
check cwd_is_repo test "$PWD" = "$REPO_EXPECTED"
"""

CHECKS = [
    "btf",
    "kprobe_pmu",
    "tracefs",
    "bpffs",
    "cgroup2",
    "lo_up",
    "bpftool_progs",
    "libbpf",
    "tmp_writable",
    "modprobe",
    "cwd_is_repo",
]


def _parse_checks(result: GuestResult) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in result.output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "check":
            found[parts[1]] = int(parts[2])
    return found


def test_kernel_boots_with_bpf_support(vm_cache: Path, repo_root: Path, kernel: str) -> None:
    result = run_script(
        kernel,
        CHECKS_SCRIPT,
        repo_root,
        timeout=180,
        env={"REPO_EXPECTED": str(repo_root)},
        cache=vm_cache,
    )
    assert result.returncode == 0, result.output
    uname = next(line.split()[1] for line in result.output.splitlines() if line.startswith("uname"))
    assert uname.startswith(kernel + "."), f"guest runs {uname}, expected {kernel}.x"
    checks = _parse_checks(result)
    failed = {name: checks.get(name) for name in CHECKS if checks.get(name) != 0}
    assert not failed, f"failed checks (None = not run): {failed}\n{result.output}"


def test_exit_status_comes_back(vm_cache: Path, repo_root: Path) -> None:
    """A failing command's own status reaches the host (not just 0 or "crashed")."""
    result = run_script(
        "6.1", "echo to-stdout; echo to-stderr >&2; exit 7", repo_root, timeout=120, cache=vm_cache
    )
    assert result.returncode == 7
    assert "to-stdout" in result.output and "to-stderr" in result.output


# bpftrace's own tcpaccept tool (a kretprobe on inet_csk_accept) must see one accept of
# a python3 server on 127.0.0.1 and exit on SIGINT. Debian installs it in /usr/sbin.
BPFTRACE_SCRIPT = r"""
set -u
port=48123
bpftrace /usr/sbin/tcpaccept.bt >/tmp/bt.out 2>&1 &
bt=$!
wait_for_line /tmp/bt.out '^Tracing' 120 || { cat /tmp/bt.out; exit 2; }
python3 - "$port" <<'EOF' &
import socket, sys
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
open("/tmp/server.ready", "w").close()
conn, _ = srv.accept()
conn.close()
EOF
server=$!
wait_for_path /tmp/server.ready 30 || exit 3
python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])))' \
  "$port"
wait "$server" || exit 4
wait_for_line /tmp/bt.out "python3.* $port" 60
seen=$?
stop_with_sigint "$bt" 60
bt_rc=$?
echo "--- bpftrace output"
cat /tmp/bt.out
echo "seen=$seen bt_rc=$bt_rc"
"""


def test_bpftrace_tcpaccept_sees_accept(vm_cache: Path, repo_root: Path) -> None:
    result = run_script("6.1", BPFTRACE_SCRIPT, repo_root, timeout=300, cache=vm_cache)
    assert result.returncode == 0, result.output
    assert "seen=0 " in result.output, f"bpftrace saw no accept:\n{result.output}"
    assert "bt_rc=0" in result.output, f"bpftrace did not exit cleanly:\n{result.output}"
