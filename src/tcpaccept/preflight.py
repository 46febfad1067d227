"""Checks that turn an unusable system into one clear line before any BPF is touched."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import resource
from typing import Callable, Optional

from .errors import TcpacceptError

BTF_PATH = "/sys/kernel/btf/vmlinux"
# The BPF ring buffer (5.8) is the newest kernel feature every attach method needs.
MIN_KERNEL = (5, 8)
CAP_PERFMON, CAP_BPF, CAP_SYS_ADMIN = 38, 39, 21


def kernel_version(release: str = "") -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def effective_caps() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


CAPABILITY_NAMES = {CAP_BPF: "CAP_BPF", CAP_PERFMON: "CAP_PERFMON"}
GRANT_HINT = ("run as root, or grant them: setcap cap_bpf,cap_perfmon+ep on the python "
              "interpreter, setpriv --ambient-caps +bpf,+perfmon (with --inh-caps), or the "
              "container's capabilities.add: [BPF, PERFMON]")


def check_privileges() -> None:
    """The effective capabilities decide, not the uid: root in a container with its
    capabilities dropped cannot load BPF either. CAP_SYS_ADMIN implies both (kernel 5.8+)."""
    caps = effective_caps()
    has = lambda cap: bool(caps >> cap & 1)  # noqa: E731
    missing = [name for cap, name in CAPABILITY_NAMES.items() if not has(cap)]
    if has(CAP_SYS_ADMIN) or not missing:
        return
    raise TcpacceptError(
        f"tcpaccept needs CAP_BPF and CAP_PERFMON to load and attach its BPF programs; "
        f"missing: {' and '.join(missing)} ({GRANT_HINT})", 77
    )


def check_kernel() -> None:
    version = kernel_version()
    if version < MIN_KERNEL:
        raise TcpacceptError(
            f"kernel {platform.release()} is too old: tcpaccept needs Linux "
            f"{MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer (BPF ring buffer)"
        )
    if not os.path.exists(BTF_PATH):
        raise TcpacceptError(
            f"this kernel has no BTF ({BTF_PATH} missing): tcpaccept needs a kernel built "
            "with CONFIG_DEBUG_INFO_BTF=y"
        )


def raise_memlock(log: Callable[[str], None]) -> None:
    """Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memcg."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY,) * 2)
    except (ValueError, OSError) as exc:
        if kernel_version() < (5, 11):
            log(f"could not raise RLIMIT_MEMLOCK ({exc}); loading may fail on this kernel")
        else:
            log(f"could not raise RLIMIT_MEMLOCK ({exc}); not needed on kernel >= 5.11")


TRACEFS_PATHS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
SYS_EXIT_ACCEPT4 = "events/syscalls/sys_exit_accept4"


def tracefs_mounted(mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """Where tracefs is mounted, from the mount table (the directories themselves are
    root-only, 0700 on Debian: a non-root user cannot tell by looking at them)."""
    try:
        with open(mountinfo) as mounts:
            points = {fields[4] for fields in (line.split() for line in mounts)
                      if "-" in fields and fields[fields.index("-") + 1] == "tracefs"}
    except OSError:
        return None
    return next((path for path in TRACEFS_PATHS if path in points), None)


def ensure_tracefs() -> str:
    """Where tracefs is, mounting it if the system did not (libbpf needs tracepoint ids).
    Never mounts over a tracefs that is there but unreadable (tracefs_ids_unreadable says)."""
    mounted = tracefs_mounted()
    if mounted:
        return mounted
    for path in TRACEFS_PATHS:  # no /proc mount table (an odd chroot): look
        if os.path.isdir(os.path.join(path, "events")):
            return path
    if not effective_caps() >> CAP_SYS_ADMIN & 1:
        raise TcpacceptError("tracefs is not mounted, and mounting it needs CAP_SYS_ADMIN "
                             "(mount -t tracefs nodev /sys/kernel/tracing as root)")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", b"/sys/kernel/tracing", b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise TcpacceptError(f"cannot mount tracefs on /sys/kernel/tracing: {os.strerror(err)}")
    return "/sys/kernel/tracing"


def tracefs_ids_unreadable() -> Optional[str]:
    """Why libbpf cannot attach tracepoint/syscalls/sys_exit_accept{,4} here (it reads the
    event's id from tracefs), or None when it can. Tracefs files are root-only: uid 0, or
    CAP_DAC_READ_SEARCH / CAP_DAC_OVERRIDE, or a tracefs mounted with gid= a group the user
    is in; CAP_BPF + CAP_PERFMON alone do not open them."""
    try:
        tracefs = ensure_tracefs()
    except TcpacceptError as exc:
        return str(exc)
    path = os.path.join(tracefs, SYS_EXIT_ACCEPT4, "id")
    try:
        with open(path) as id_file:
            id_file.read()
    except PermissionError:
        return (f"{path} is readable by root only (CAP_BPF and CAP_PERFMON do not open it; "
                "CAP_DAC_READ_SEARCH would)")
    except FileNotFoundError:
        return None  # no syscall tracepoints at all: probes.unusable_reason says so
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    return None


# bpf(2) by machine; a command no kernel knows: the kernel answers EINVAL to a holder of
# CAP_BPF, so EPERM/ENOSYS comes from a filter in front of the syscall, not from the kernel.
SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
BPF_UNKNOWN_CMD = 0x7FFF
SECCOMP_FIX = ("use the Localhost profile deploy/kubernetes/seccomp/tcpaccept.json (the "
               "runtime default with bpf and perf_event_open allowed for CAP_BPF/CAP_PERFMON), "
               "or a runtime whose default allows them (containerd >= 1.7, "
               "containers-common >= 0.60)")


def seccomp_mode(status: str = "/proc/self/status") -> int:
    """0 none, 1 strict, 2 filter (what a container runtime's profile installs)."""
    try:
        with open(status) as lines:
            for line in lines:
                if line.startswith("Seccomp:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def seccomp_refusal(machine: str = "") -> Optional[str]:
    """One line naming seccomp and the fix when a seccomp filter refuses bpf(), else None."""
    number = SYS_BPF.get(machine or platform.machine())
    if number is None or seccomp_mode() != 2:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, BPF_UNKNOWN_CMD, None, 0) != -1:
        return None
    err = ctypes.get_errno()
    if err not in (errno.EPERM, errno.ENOSYS):
        return None
    return (f"bpf() is refused by this process's seccomp filter (Seccomp: 2 in "
            f"/proc/self/status; bpf answers {errno.errorcode[err]}): {SECCOMP_FIX}")
