"""Whether the kernel refuses every fexit program, asked with a two-instruction program.

Some kernels refuse all fentry/fexit programs with EPERM, even to root (a lockdown or
vendor policy). Finding that out by loading the whole object costs a start libbpf's vmlinux
BTF parse, every map and the CO-RE relocation for nothing (40 ms and more), and finding the
target function's BTF id for a small probe costs the same parse (~25 ms). So the probe names
no target: a kernel that refuses fexit as such says EPERM before it looks at the target,
while one that allows fexit answers EINVAL (no target given) and the full load decides, as
it did before. Only EPERM is taken as an answer; the load costs ~0.2 ms."""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Optional

from . import libbpf

BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_FEXIT = 25
RETURN_ZERO = bytes.fromhex("b700000000000000" "9500000000000000")  # r0 = 0; exit


class _ProgLoadOpts(ctypes.Structure):
    """The head of libbpf's struct bpf_prog_load_opts; sz tells libbpf where it ends."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("attempts", ctypes.c_int),
        ("expected_attach_type", ctypes.c_int),
    ]


def fexit_refused() -> Optional[str]:
    """Why no fexit program can load on this kernel (it said EPERM), else None."""
    opts = _ProgLoadOpts(sz=ctypes.sizeof(_ProgLoadOpts), expected_attach_type=BPF_TRACE_FEXIT)
    insns = ctypes.create_string_buffer(RETURN_ZERO, len(RETURN_ZERO))
    fd = libbpf.lib().bpf_prog_load(BPF_PROG_TYPE_TRACING, b"fexit_probe", b"GPL", insns,
                                    len(RETURN_ZERO) // 8, ctypes.byref(opts))
    if fd >= 0:  # not expected without a target; the full load decides
        os.close(fd)
        return None
    err = ctypes.get_errno() or -fd
    if err != errno.EPERM:
        return None
    return f"the kernel refuses fentry/fexit programs (a two-instruction fexit: {os.strerror(err)})"
