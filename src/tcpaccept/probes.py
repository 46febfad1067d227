"""Which attach method works on this kernel, and why not the others.

The methods, best first:
  fexit       fexit on inet_csk_accept: cheapest; sees io_uring and in-kernel accepts.
  kprobe      kprobe + kretprobe on inet_csk_accept: same coverage, a little dearer.
  tracepoint  syscalls:sys_exit_accept{,4}: works without kprobes or fentry; sees accept()
              and accept4() syscalls only, including ones already blocked at start.
Cheap prerequisites are checked here; the real test is loading and attaching (tracer.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from . import iouring, libbpf
from .errors import TcpacceptError
from .preflight import BTF_PATH, ensure_tracefs

METHODS = ("fexit", "kprobe", "tracepoint")
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"
BPF_FUNC_TASK_PT_REGS = 175  # enum bpf_func_id, since 5.15

PROGRAMS = {
    "fexit": ("fexit_inet_csk_accept",),  # or FEXIT_PRE_6_10, see plan_for
    "kprobe": ("kprobe_inet_csk_accept", "kretprobe_inet_csk_accept"),
    "tracepoint": ("tp_exit_accept4", "tp_exit_accept"),
}
# inet_csk_accept(sk, flags, err, kern), before 6.10 turned it into (sk, arg).
FEXIT_PRE_6_10 = ("fexit_inet_csk_accept_pre_6_10",)
# Only when the saved user registers cannot give the listening fd (kernels < 5.15).
TRACEPOINT_ENTER_PROGRAMS = ("tp_enter_accept4", "tp_enter_accept")
# Stamps when children become ESTABLISHED, for the accept-queue latency; every method.
LATENCY_PROGRAMS = ("stamp_established",)


@dataclass(frozen=True)
class Plan:
    """The programs to load for one method, and how the tracepoint finds the listener."""

    method: str
    programs: tuple[str, ...]
    saved_regs: bool = False


def unusable_reason(method: str) -> Optional[str]:
    """Why method cannot work here without trying to load it, or None if worth trying."""
    if method == "fexit":
        if not os.path.exists(BTF_PATH):
            return "no kernel BTF"
        return None
    if method == "kprobe":
        # kallsyms listing inet_csk_accept proves nothing: it does with kprobes compiled out.
        if not os.path.isdir(KPROBE_PMU):
            return f"no kprobe PMU ({KPROBE_PMU} missing: kernel built without kprobes)"
        return None
    if method == "tracepoint":
        try:
            tracefs = ensure_tracefs()
        except TcpacceptError as exc:
            return str(exc)
        if not os.path.isdir(os.path.join(tracefs, "events/syscalls/sys_exit_accept4")):
            return "no syscall tracepoints (kernel built without CONFIG_FTRACE_SYSCALLS)"
        return None
    raise ValueError(f"unknown attach method {method!r}")


def plan_for(method: str, queue_latency: bool = True, io_uring: bool = True) -> Plan:
    common = LATENCY_PROGRAMS if queue_latency else ()
    if method == "fexit":
        new_signature = libbpf.kernel_has_struct("proto_accept_arg")
        return Plan(method, (PROGRAMS[method] if new_signature else FEXIT_PRE_6_10) + common)
    if method != "tracepoint":
        return Plan(method, PROGRAMS[method] + common)
    saved_regs = libbpf.probe_helper(libbpf.BPF_PROG_TYPE_TRACEPOINT, BPF_FUNC_TASK_PT_REGS)
    # io_uring accepts bypass the syscalls; fexit/kprobe see them already (no double rows).
    programs = PROGRAMS[method] + common + iouring.support(io_uring).programs
    if not saved_regs:
        programs += TRACEPOINT_ENTER_PROGRAMS
    return Plan(method, programs, saved_regs)


def candidates(requested: str) -> tuple[str, ...]:
    return METHODS if requested == "auto" else (requested,)
