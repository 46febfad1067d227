/* SPDX-License-Identifier: GPL-2.0 */
/* The tracepoint method without tracefs: accept()/accept4() seen at the raw sys_exit
 * tracepoint (tp_btf, attached by name through bpf(); no tracepoint id to read).
 *
 * Why: libbpf attaches tracepoint/syscalls/... with perf_event_open, which needs the event's
 * id from tracefs (events/syscalls/sys_exit_accept4/id), readable by root only (or with
 * CAP_DAC_READ_SEARCH). A user with CAP_BPF + CAP_PERFMON alone can load and attach tp_btf
 * programs but cannot read that id. The price: sys_exit runs this program for every syscall
 * of every task, which leaves at once unless the syscall is accept or accept4 (user space
 * uses these only when the tracefs ids cannot be read; bench/sys_exit_tax.py measures it).
 *
 * At sys_exit the tracepoint's pt_regs are the thread's saved user registers: they hold the
 * syscall number and its first argument, the listening fd (where: arch.bpf.h, through
 * kernel_types.h). */
#ifndef TCPACCEPT_SYS_EXIT_BPF_H
#define TCPACCEPT_SYS_EXIT_BPF_H

#include <bpf/bpf_tracing.h>
#include "accept.bpf.h"
#include "fds.bpf.h"

static __always_inline bool is_accept_syscall(struct pt_regs *regs)
{
	long nr = SYSCALL_NR(regs);

	return (nr == ARCH_NR_ACCEPT || nr == ARCH_NR_ACCEPT4) && !in_compat_syscall(regs);
}

/* Probe reads (kernels 5.8 to 6.1, or where the BTF walk is refused). */
SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit_accept, struct pt_regs *regs, long ret)
{
	if (ret < 0 || !is_accept_syscall(regs))
		return 0;
	__u64 id = bpf_get_current_pid_tgid();

	if (!task_wanted(id >> 32))
		return 0;
	struct task_struct *task = (void *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	__s32 listen_fd = (__s32)PT_REGS_PARM1_SYSCALL(regs);
	__s32 fd = (__s32)ret;

	return emit_accept(sock_of_fd(fdt, fd), listen_fd >= 0 ? sock_of_fd(fdt, listen_fd) : NULL,
			   fd, listen_fd, PROBE_TRACEPOINT);
}

/* Direct loads through BTF pointers (6.2+), as tp_exit_accept4_btf. */
SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit_accept_btf, struct pt_regs *regs, long ret)
{
	if (ret < 0 || !is_accept_syscall(regs))
		return 0;
	struct task_struct *task = current_task_untrusted();

	if (!task_wanted(task->tgid))
		return 0;
	struct fdtable *fdt = task->files->fdt;
	__s32 listen_fd = (__s32)PT_REGS_PARM1_SYSCALL(regs);
	__s32 fd = (__s32)ret;

	return build_accept(sock_of_fd_btf(fdt, fd),
			    listen_fd >= 0 ? sock_of_fd_btf(fdt, listen_fd) : NULL, fd, listen_fd,
			    PROBE_TRACEPOINT, true);
}

#endif
