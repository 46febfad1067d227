/* SPDX-License-Identifier: GPL-2.0 */
/* Everything in tcpaccept's BPF code that depends on the CPU: the kernel's saved-register
 * layout (struct pt_regs), where a syscall's number and first argument are in it, how a
 * 32-bit task's syscall is recognised, the kernel stack size. Chosen at build time by the
 * Makefile's -D__TARGET_ARCH_{x86,arm64}; one object per architecture.
 *
 * Readers use:
 *   struct pt_regs            (kprobe context, tp_btf/sys_exit argument, bpf_task_pt_regs)
 *   PT_REGS_PARM1{,_SYSCALL}  from libbpf's bpf_tracing.h, which reads the fields below
 *   SYSCALL_NR(regs)          the syscall number of the saved user registers (direct load)
 *   ARCH_NR_ACCEPT, ARCH_NR_ACCEPT4
 *   in_compat_syscall(regs)   true for a 32-bit task, whose syscall numbers mean others
 *   KERNEL_STACK_SIZE         THREAD_SIZE; the user registers are saved at its top
 * The layouts need only the field names: every struct is relocated by CO-RE. */
#ifndef TCPACCEPT_ARCH_BPF_H
#define TCPACCEPT_ARCH_BPF_H

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* Both: THREAD_SIZE is 16 KiB (x86-64; arm64 with 4 KiB pages and no KASAN, as Debian's). */
#define KERNEL_STACK_SIZE (4096 << 2)

#if defined(__TARGET_ARCH_x86)

struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
} __attribute__((preserve_access_index));

#define SYSCALL_NR(regs) ((long)(regs)->orig_ax)

/* arch/x86/entry/syscalls/syscall_64.tbl. x32 numbers carry bit 30 and match neither. */
#define ARCH_NR_ACCEPT 43
#define ARCH_NR_ACCEPT4 288

/* A 32-bit task's numbers mean other syscalls (ia32 43 is times): like the syscalls:*
 * tracepoints, which ignore compat syscalls, skip a task in an ia32 syscall
 * (thread_info.status & TS_COMPAT). */
#define TS_COMPAT 0x0002

struct thread_info___x86 {
	__u32 status;
} __attribute__((preserve_access_index));

struct task_struct___x86 {
	struct thread_info___x86 thread_info;
} __attribute__((preserve_access_index));

static __always_inline bool in_compat_syscall(struct pt_regs *regs)
{
	struct task_struct___x86 *task = (void *)bpf_get_current_task();

	if (!bpf_core_field_exists(task->thread_info))
		return false;
	return BPF_CORE_READ(task, thread_info.status) & TS_COMPAT;
}

#elif defined(__TARGET_ARCH_arm64)

/* What kprobe programs see (bpf_user_pt_regs_t) and what bpf_tracing.h casts to. */
struct user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
} __attribute__((preserve_access_index));

/* The kernel's pt_regs starts with user_pt_regs' fields (an anonymous union, which CO-RE
 * walks). At sys_exit x0 already holds the return value: the first argument survives in
 * orig_x0 (libbpf's PT_REGS_PARM1_SYSCALL reads it), the number in syscallno. */
struct pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
	__u64 orig_x0;
	__s32 syscallno;
} __attribute__((preserve_access_index));

#define SYSCALL_NR(regs) ((long)(regs)->syscallno)

/* include/uapi/asm-generic/unistd.h, the table arm64 uses. */
#define ARCH_NR_ACCEPT 202
#define ARCH_NR_ACCEPT4 242

/* An AArch32 task (numbers from arch/arm's table: 202 is not accept there) runs with
 * PSTATE.nRW set in its saved registers, the bit the kernel's compat_user_mode() tests;
 * it is the hardware's, so no kernel version moves it. */
#define PSR_MODE32_BIT 0x00000010

static __always_inline bool in_compat_syscall(struct pt_regs *regs)
{
	return BPF_CORE_READ(regs, pstate) & PSR_MODE32_BIT;
}

#else
#error "arch.bpf.h: tcpaccept is built for x86 (x86_64) and arm64 (aarch64) only"
#endif

#endif
