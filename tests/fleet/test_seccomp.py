"""An agent whose bpf() a seccomp filter refuses says so in one line and exits non-zero.

The filter is real: a wrapper installs it with libseccomp (Debian libseccomp2, podman's
dependency) and execs tcpaccept, as a container runtime's profile would. The positive
control is the same wrapper refusing another syscall (the agent then starts). The shipped
Localhost profile is checked against podman's default here, and run in tests/fleet/test_image.py
and tests/fleet/test_kube_play.py.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest

from tests.fleet.deployment import KUBERNETES, VENV_BIN
from tests.fleet.seccomp_profile import AGENT_CAPS, HOST_DEFAULT, allowed, flat_profile

# Runs in the child: filter (everything allowed but `syscall`, answered with `errno`), exec.
WRAPPER = """
import ctypes, os, sys
seccomp = ctypes.CDLL("libseccomp.so.2")
seccomp.seccomp_init.restype = ctypes.c_void_p
ctx = seccomp.seccomp_init(0x7fff0000)  # SCMP_ACT_ALLOW
number = seccomp.seccomp_syscall_resolve_name(sys.argv[1].encode())
assert number >= 0, sys.argv[1]
assert seccomp.seccomp_rule_add(ctypes.c_void_p(ctx), 0x00050000 | int(sys.argv[2]), number, 0) == 0
assert seccomp.seccomp_load(ctypes.c_void_p(ctx)) == 0
os.execv(sys.argv[3], sys.argv[3:])
"""


def run_filtered(syscall: str, err: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRAPPER, syscall, str(err),
                           str(VENV_BIN / "tcpaccept"), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSYS])  # docker's, containers-common's
def test_bpf_refused_by_seccomp_is_one_line_naming_it(err: int) -> None:
    result = run_filtered("bpf", err, "--count", "1")
    assert result.returncode not in (0, None), result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # not the per-method list, no traceback
    assert "seccomp" in lines[0] and "deploy/kubernetes/seccomp/tcpaccept.json" in lines[0]
    assert "Traceback" not in result.stderr


def test_another_refused_syscall_leaves_the_agent_working() -> None:
    # Positive control: the wrapper's filter itself does not make the agent fail.
    result = run_filtered("kexec_load", errno.EPERM, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "seccomp" not in result.stdout + result.stderr


def test_shipped_profile_is_the_runtime_default_with_bpf_opened() -> None:
    shipped = json.loads((KUBERNETES / "seccomp" / "tcpaccept.json").read_text())
    default = json.loads(HOST_DEFAULT.read_text())
    assert shipped == flat_profile(default), \
        "regenerate: .venv/bin/python -m tests.fleet.seccomp_profile"
    # What it changes against the default, for a container with the agent's capabilities:
    assert allowed(shipped, set()) - allowed(default, AGENT_CAPS) == {"bpf", "perf_event_open"}
    assert allowed(default, AGENT_CAPS) <= allowed(shipped, set())
