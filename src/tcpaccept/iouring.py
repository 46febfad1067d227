"""Whether the tracepoint method can see io_uring accepts here, and with which programs.

The syscall tracepoints never see an IORING_OP_ACCEPT; bpf/iouring.bpf.h does, from
io_uring's own tracepoints (tp_btf). fexit and kprobe need none of it: io_uring accepts go
through inet_csk_accept, which they hook, so these programs load with the tracepoint method
only and no accept is reported twice.

Kernel drift, read from the running kernel's BTF (each tracepoint has a typedef
btf_trace_<name>: a pointer to a function whose first parameter is the tracepoint's
private data, then the tracepoint's arguments):
  io_uring_complete(ctx, req, cqe)                                     6.13 and later
  io_uring_complete(ctx, req, user_data, res, cflags, extra1, extra2)  5.19 to 6.12
  io_uring_submit_req(req)                                             6.3 and later
  io_uring_task_add(req, mask)                                         5.19 and later
Below 6.2 the programs are not offered (the request layout they read is 6.2's and later).

A multishot accept's CQEs come without their request: bpf/iouring.bpf.h remembers the
request at submission (io_uring_submit_req) and, for a request armed before the tracer
started, at its next poll wakeup (io_uring_task_add). Without the latter, --check says that
multishot accepts armed before the start are not seen.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import re
import struct
from dataclasses import dataclass
from typing import Optional

from . import libbpf

MIN_KERNEL = (6, 2)
COMPLETE = "iouring_complete"  # 6.13+
COMPLETE_PRE_6_13 = "iouring_complete_pre_6_13"
SUBMIT = "iouring_submit_req"
TASK_ADD = "iouring_task_add"
OVERFLOW = "iouring_cqe_overflow"
ALL_PROGRAMS = (COMPLETE, COMPLETE_PRE_6_13, SUBMIT, TASK_ADD, OVERFLOW)
# Parameters of the btf_trace_ function: the tracepoint's arguments plus its data pointer.
COMPLETE_PARAMS = {4: COMPLETE, 8: COMPLETE_PRE_6_13}
TASK_ADD_PARAMS = 3  # (data, req, mask); before 5.19 it took (ctx, opcode, user_data, ...)
NOT_SEEN_ARMED_BEFORE = ("multishot accepts armed before the start are not seen: "
                         "no io_uring_task_add(req, mask)")

# enum btf_kind (include/uapi/linux/btf.h)
BTF_KIND_PTR, BTF_KIND_TYPEDEF, BTF_KIND_FUNC_PROTO = 2, 8, 13


@dataclass(frozen=True)
class Support:
    """The io_uring programs to load (none when unsupported) and why, for --check."""

    programs: tuple[str, ...]
    detail: str

    @property
    def available(self) -> bool:
        return bool(self.programs)

    def check_line(self) -> str:
        return f"io_uring accepts: {'yes' if self.available else 'no'} ({self.detail})"


def kernel_version(release: Optional[str] = None) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def tracepoint_params(btf: int, tracepoint: str) -> Optional[int]:
    """How many parameters btf_trace_<tracepoint> takes, or None if the kernel lacks it."""
    lib = libbpf.lib()
    type_id = lib.btf__find_by_name_kind(btf, f"btf_trace_{tracepoint}".encode(),
                                         BTF_KIND_TYPEDEF)
    for expected in (BTF_KIND_TYPEDEF, BTF_KIND_PTR, BTF_KIND_FUNC_PROTO):
        if type_id <= 0:
            return None
        address = lib.btf__type_by_id(btf, type_id)
        if not address:
            return None
        # struct btf_type: name_off, info (kind in bits 24-28, vlen in bits 0-15), type.
        _name, info, type_id = struct.unpack("<III", ctypes.string_at(address, 12))
        if (info >> 24) & 0x1F != expected:
            return None
        if expected == BTF_KIND_FUNC_PROTO:
            return info & 0xFFFF
    return None


@functools.lru_cache(maxsize=1)
def kernel_tracepoints() -> tuple[Optional[int], Optional[int], Optional[int]]:
    """Parameters of io_uring_complete, io_uring_submit_req and io_uring_task_add (None:
    absent). Parsing the kernel's BTF takes ~50 ms: once per process (--check plans the
    method several times)."""
    btf = libbpf.lib().btf__load_vmlinux_btf()
    if not btf:
        raise OSError("no kernel BTF")
    try:
        return (tracepoint_params(btf, "io_uring_complete"),
                tracepoint_params(btf, "io_uring_submit_req"),
                tracepoint_params(btf, "io_uring_task_add"))
    finally:
        libbpf.lib().btf__free(btf)


def support(wanted: bool = True) -> Support:
    """What this kernel allows; wanted=False (--no-io-uring) loads nothing."""
    if not wanted:
        return Support((), "turned off with --no-io-uring")
    version = kernel_version()
    if version < MIN_KERNEL:
        return Support((), f"kernel {version[0]}.{version[1]} < "
                           f"{MIN_KERNEL[0]}.{MIN_KERNEL[1]}; fexit or kprobe see them")
    try:
        complete_params, submit_params, task_add_params = kernel_tracepoints()
    except libbpf.LibbpfMissing as exc:
        return Support((), str(exc))
    except OSError:
        return Support((), "no kernel BTF")
    complete = COMPLETE_PARAMS.get(complete_params or 0)
    submit = submit_params is not None
    if complete is None:
        return Support((), "no io_uring_complete tracepoint of a known signature "
                           "(kernel without io_uring?)")
    if not submit:
        # Multishot and overflowed CQEs come without their request: only a request
        # remembered at submission tells them apart, and that tracepoint is 6.3's.
        return Support((complete,), "single-shot only: no io_uring_submit_req before 6.3")
    if task_add_params != TASK_ADD_PARAMS:
        return Support((complete, SUBMIT, OVERFLOW),
                       f"tracepoint method, io_uring_complete; {NOT_SEEN_ARMED_BEFORE}")
    return Support((complete, SUBMIT, TASK_ADD, OVERFLOW), "tracepoint method, io_uring_complete")
