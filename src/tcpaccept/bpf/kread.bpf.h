/* SPDX-License-Identifier: GPL-2.0 */
/* The two ways a program reads a kernel field: a direct load through a BTF pointer (the
 * verifier checks the access; no helper call) or a probe read. Every helper that serves
 * both kinds of program takes `direct`, a constant at each call site (all is inlined): each
 * program is compiled with only one of the two. */
#ifndef TCPACCEPT_KREAD_BPF_H
#define TCPACCEPT_KREAD_BPF_H

#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* ___arrow is bpf_core_read.h's "a->b->c" builder, the one BPF_CORE_READ itself uses. */
#define KREAD(direct, src, ...) \
	((direct) ? ___arrow((src), __VA_ARGS__) : BPF_CORE_READ((src), __VA_ARGS__))

/* Retypes a pointer for direct loads (6.2; the verifier turns the call into a move). Weak:
 * the object still loads on older kernels, where user space loads no program that calls it. */
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id__k) __ksym __weak;

/* The current task for direct loads, as an untrusted pointer (6.2+). Every pointer loaded
 * from a trusted one makes the verifier look its type up by name up to four times
 * (btf_nested_type_is_trusted: "task_struct__safe_trusted" and the like, a linear search
 * through the kernel's BTF), on every path it explores: most of the program's load time.
 * Loads through an untrusted pointer are the same instructions at run time, with no such
 * search. (bpf_task_pt_regs needs the trusted pointer itself.) */
static __always_inline struct task_struct *untrusted_task(struct task_struct *trusted)
{
	return bpf_rdonly_cast(trusted, bpf_core_type_id_kernel(struct task_struct));
}

static __always_inline struct task_struct *current_task_untrusted(void)
{
	return untrusted_task(bpf_get_current_task_btf());
}

#endif
