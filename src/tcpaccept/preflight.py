"""Checks that turn an unusable system into one clear line before any BPF is touched."""

from __future__ import annotations

import ctypes
import os
import platform
import re
import resource
from typing import Callable

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


def check_privileges() -> None:
    caps = effective_caps()
    has = lambda cap: bool(caps >> cap & 1)  # noqa: E731
    if os.geteuid() == 0 or has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        return
    raise TcpacceptError(
        "tcpaccept needs root (or CAP_BPF and CAP_PERFMON) to load BPF programs", 77
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


def ensure_tracefs() -> str:
    """Where tracefs is, mounting it if the system did not (libbpf needs tracepoint ids)."""
    for path in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.isdir(os.path.join(path, "events")):
            return path
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", b"/sys/kernel/tracing", b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise TcpacceptError(f"cannot mount tracefs on /sys/kernel/tracing: {os.strerror(err)}")
    return "/sys/kernel/tracing"
