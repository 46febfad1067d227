"""Which attach method works on this kernel, and why not the others.

The methods, best first:
  fexit       fexit on inet_csk_accept: cheapest; sees io_uring and in-kernel accepts.
  kprobe      kprobe + kretprobe on inet_csk_accept: same coverage, a little dearer.
  tracepoint  syscalls:sys_exit_accept{,4}: works without kprobes or fentry; sees accept()
              and accept4() syscalls only, including ones already blocked at start.
              Two programs for it: where the kernel lets a tracepoint walk BTF pointers
              (6.2+), direct loads ("btf-walk", ~0.45 us per accept here); elsewhere
              probe reads ("probe-read", ~1.2 us). Without readable tracefs ids (a
              non-root user with CAP_BPF + CAP_PERFMON only) the same programs run at
              the raw sys_exit tracepoint instead ("at sys_exit": every syscall pays
              the check for accept, bpf/sys_exit.bpf.h).
Cheap prerequisites are checked here (fexit: a two-instruction load, fexit_probe.py);
the real test is loading and attaching (tracer.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Optional

from . import iouring, libbpf
from .btf import kernel_btf_has_name, kernel_btf_has_struct
from .fexit_probe import fexit_refused
from .preflight import BTF_PATH, SYS_EXIT_ACCEPT4, ensure_tracefs, tracefs_ids_unreadable

METHODS = ("fexit", "kprobe", "tracepoint")
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"
BPF_FUNC_GET_CURRENT_TASK_BTF = 158  # enum bpf_func_id, since 5.11
BPF_FUNC_TASK_PT_REGS = 175  # since 5.15
# Forces one tracepoint program (tests and the benchmark compare them on one kernel).
ACCEPT_PROGRAM_ENV = "TCPACCEPT_ACCEPT_PROGRAM"

PROGRAMS = {
    "fexit": ("fexit_inet_csk_accept",),  # or FEXIT_PRE_6_10, see plan_for
    "kprobe": ("kprobe_inet_csk_accept", "kretprobe_inet_csk_accept"),
    "tracepoint": ("tp_exit_accept4",),
}
# inet_csk_accept(sk, flags, err, kern), before 6.10 turned it into (sk, arg).
FEXIT_PRE_6_10 = ("fexit_inet_csk_accept_pre_6_10",)
# The same events through BTF pointers (bpf_get_current_task_btf, bpf_rdonly_cast).
TRACEPOINT_BTF_WALK = ("tp_exit_accept4_btf",)
# The same two programs at the raw sys_exit tracepoint, attached without tracefs.
SYS_EXIT_PROBE_READ = ("sys_exit_accept",)
SYS_EXIT_BTF_WALK = ("sys_exit_accept_btf",)
# "sys_exit" forces them (tests and the benchmark, as root, where tracefs is readable).
TRACEPOINT_ATTACH_ENV = "TCPACCEPT_TRACEPOINT_ATTACH"
# Only when the saved user registers cannot give the listening fd (kernels < 5.15).
TRACEPOINT_ENTER_PROGRAMS = ("tp_enter_accept4",)
# accept() has accept4()'s tracepoint records: each accept4 program is also attached to
# accept()'s tracepoint (one program verified, not two copies: the verifier's walk of the
# BTF-walking program is the largest part of a start).
TWIN_TRACEPOINTS = {
    "tp_exit_accept4": ("syscalls", "sys_exit_accept"),
    "tp_exit_accept4_btf": ("syscalls", "sys_exit_accept"),
    "tp_enter_accept4": ("syscalls", "sys_enter_accept"),
}
# Stamps when children join the accept queue, for the accept-queue latency: at fexit of
# inet_csk_complete_hashdance (one run per child) where fexit works, else at every TCP state
# change (inet_sock_set_state, kept when SYN_RECV -> ESTABLISHED).
LATENCY_PROGRAMS = {"fexit": ("stamp_queued",), "kprobe": ("stamp_established",),
                    "tracepoint": ("stamp_established",)}


@dataclass(frozen=True)
class Plan:
    """The programs to load for one method, and how the tracepoint finds the listener."""

    method: str
    programs: tuple[str, ...]
    saved_regs: bool = False
    variant: str = ""  # which tracepoint program, for --verbose: btf-walk or probe-read
    fallback: Optional[Plan] = None  # tried if this plan does not load


def btf_walk_unusable(saved_regs: bool) -> Optional[str]:
    """Why the tracepoint cannot walk BTF pointers here, or None if it can."""
    if os.environ.get(ACCEPT_PROGRAM_ENV) == "probe-read":
        return f"{ACCEPT_PROGRAM_ENV}=probe-read"
    if not os.path.exists(BTF_PATH):
        return "no kernel BTF"
    if not libbpf.probe_helper(libbpf.BPF_PROG_TYPE_TRACEPOINT, BPF_FUNC_GET_CURRENT_TASK_BTF):
        return "no bpf_get_current_task_btf for tracepoints (kernel < 5.11)"
    if not saved_regs:
        return "no bpf_task_pt_regs (kernel < 5.15)"
    if not kernel_btf_has_name("bpf_rdonly_cast"):
        return "no bpf_rdonly_cast kfunc (kernel < 6.2)"
    return None


def unusable_reason(method: str) -> Optional[str]:
    """Why method cannot work here without trying to load it, or None if worth trying."""
    if method == "fexit":
        if not os.path.exists(BTF_PATH):
            return "no kernel BTF"
        return fexit_refused()
    if method == "kprobe":
        # kallsyms listing inet_csk_accept proves nothing: it does with kprobes compiled out.
        if not os.path.isdir(KPROBE_PMU):
            return f"no kprobe PMU ({KPROBE_PMU} missing: kernel built without kprobes)"
        return None
    if method == "tracepoint":
        no_tracefs = syscall_tracepoints_unattachable()
        if no_tracefs is None:
            if not os.path.isdir(os.path.join(ensure_tracefs(), SYS_EXIT_ACCEPT4)):
                return "no syscall tracepoints (kernel built without CONFIG_FTRACE_SYSCALLS)"
        elif not os.path.exists(BTF_PATH):  # tp_btf/sys_exit needs the kernel's BTF
            return f"{no_tracefs}, and no kernel BTF to attach at sys_exit instead"
        return None
    raise ValueError(f"unknown attach method {method!r}")


def syscall_tracepoints_unattachable() -> Optional[str]:
    """Why syscalls:sys_exit_accept{,4} cannot be attached through tracefs, or None."""
    if os.environ.get(TRACEPOINT_ATTACH_ENV) == "sys_exit":
        return f"{TRACEPOINT_ATTACH_ENV}=sys_exit"
    return tracefs_ids_unreadable()


def plan_for(method: str, queue_latency: bool = True, io_uring: bool = True) -> Plan:
    common = LATENCY_PROGRAMS[method] if queue_latency else ()
    if method == "fexit":
        new_signature = kernel_btf_has_struct("proto_accept_arg")  # 6.10+
        return Plan(method, (PROGRAMS[method] if new_signature else FEXIT_PRE_6_10) + common)
    if method != "tracepoint":
        return Plan(method, PROGRAMS[method] + common)
    saved_regs = libbpf.probe_helper(libbpf.BPF_PROG_TYPE_TRACEPOINT, BPF_FUNC_TASK_PT_REGS)
    # io_uring accepts bypass the syscalls; fexit/kprobe see them already (no double rows).
    others = common + iouring.support(io_uring).programs
    accept_programs, btf_walk_programs, where = PROGRAMS[method], TRACEPOINT_BTF_WALK, ""
    no_tracefs = syscall_tracepoints_unattachable()
    if no_tracefs is not None:
        # The sys_exit programs read the listening fd from the tracepoint's own registers:
        # no enter programs, whatever the kernel.
        accept_programs, btf_walk_programs = SYS_EXIT_PROBE_READ, SYS_EXIT_BTF_WALK
        where = f" at sys_exit, every syscall checked ({no_tracefs})"
    elif not saved_regs:
        others += TRACEPOINT_ENTER_PROGRAMS
    probe_read = Plan(method, accept_programs + others, saved_regs, "probe-read" + where)
    why_not = btf_walk_unusable(saved_regs)
    if why_not is not None:
        return replace(probe_read, variant=f"probe-read ({why_not}){where}")
    # Chosen from what the kernel offers; should its verifier still refuse the walk, the
    # probe reads work wherever the tracepoint does.
    return Plan(method, btf_walk_programs + others, saved_regs, "btf-walk" + where, probe_read)


def candidates(requested: str) -> tuple[str, ...]:
    return METHODS if requested == "auto" else (requested,)
