// SPDX-License-Identifier: GPL-2.0
/* tcpaccept: one event per successful passive TCP accept.
 *
 * Three attach methods share one event builder (build_accept, accept.bpf.h); user space
 * keeps exactly one method's programs with bpf_program__set_autoload:
 *   fexit      fexit/inet_csk_accept            (listener = arg 0, child = return value)
 *   kprobe     kprobe + kretprobe inet_csk_accept (listener saved per thread at entry)
 *   tracepoint syscalls:sys_exit_accept{,4}     (one program on both; fds resolved through
 *                                                the task's fd table),
 *              or tp_btf/sys_exit without tracefs (sys_exit.bpf.h), and io_uring's
 *              completions (iouring.bpf.h)
 * plus a stamp of when each child joined the accept queue (fexit/inet_csk_complete_hashdance
 * with fexit, else tp_btf/inet_sock_set_state), so the accept can report how long it waited.
 *
 * The headers form a tree; each includes what it uses:
 *   tcpaccept.h      the record (struct accept_event), shared with user space through BTF
 *   kernel_types.h   the kernel's types, CO-RE relocated; arch.bpf.h its per-CPU-architecture
 *                    part (pt_regs, syscall numbers)
 *   maps.bpf.h       load-time settings, the record path's and the filters' maps
 *   kread.bpf.h      KREAD: a field by direct load or probe read; bpf_rdonly_cast
 *   accepter.bpf.h   who accepted (ids, comm, cgroup) and the task filters;
 *                    struct accept_facts
 *   aggregate.bpf.h  the in-kernel count: aggregate_accept(facts)
 *   queue_stamps.bpf.h  when each child was queued, for the accept-queue latency
 *   accept.bpf.h     build_accept: socket filters -> facts -> aggregate / submit_record
 *   fds.bpf.h        fd -> sock
 *   iouring.bpf.h    io_uring accept programs
 *   sys_exit.bpf.h   accept() at the raw sys_exit tracepoint */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "tcpaccept.h"
#include "maps.bpf.h"
#include "accept.bpf.h"
#include "fds.bpf.h"
#include "iouring.bpf.h"
#include "sys_exit.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* ---- fexit ---- */

/* 6.10 changed inet_csk_accept(sk, flags, err, kern) into inet_csk_accept(sk, arg). One
 * program per signature: user space keeps the one the kernel's BTF describes (choosing
 * in here would make clang compute the context offset, which the verifier refuses). */
SEC("fexit/inet_csk_accept")
int BPF_PROG(fexit_inet_csk_accept, struct sock *listener, struct proto_accept_arg *arg,
	     struct sock *child)
{
	if (!task_wanted(bpf_get_current_pid_tgid() >> 32))
		return 0;
	return emit_accept(child, listener, -1, -1, PROBE_FEXIT);
}

SEC("fexit/inet_csk_accept")
int BPF_PROG(fexit_inet_csk_accept_pre_6_10, struct sock *listener, int flags, int *err,
	     bool kern, struct sock *child)
{
	if (!task_wanted(bpf_get_current_pid_tgid() >> 32))
		return 0;
	return emit_accept(child, listener, -1, -1, PROBE_FEXIT);
}

/* ---- kprobe ---- */

SEC("kprobe/inet_csk_accept")
int BPF_KPROBE(kprobe_inet_csk_accept, struct sock *listener)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	__u64 sk = (__u64)listener;

	if (!task_wanted(id >> 32))
		return 0;
	bpf_map_update_elem(&accepting_sock, &tid, &sk, BPF_ANY);
	return 0;
}

SEC("kretprobe/inet_csk_accept")
int BPF_KRETPROBE(kretprobe_inet_csk_accept, struct sock *child)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *listener = bpf_map_lookup_elem(&accepting_sock, &tid);
	struct sock *listen_sk;

	if (!listener)
		return 0;
	listen_sk = (void *)*listener;
	bpf_map_delete_elem(&accepting_sock, &tid);
	return emit_accept(child, listen_sk, -1, -1, PROBE_KPROBE);
}

/* ---- tracepoint ---- */

static __always_inline int on_accept_enter(struct syscall_enter_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	__s32 fd = (__s32)ctx->args[0];

	if (!task_wanted(id >> 32))
		return 0;
	bpf_map_update_elem(&accepting_fd, &tid, &fd, BPF_ANY);
	return 0;
}

/* The accepting thread's saved user registers: they still hold the syscall's first
 * argument, the listening fd, even for an accept() that blocked before tracing began. */
static __always_inline struct pt_regs *saved_user_regs(void)
{
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_task_pt_regs))
		/* 5.15+; it wants a BTF task pointer (5.11+). */
		return (void *)bpf_task_pt_regs(bpf_get_current_task_btf());
	/* Older kernels: what the kernel's task_pt_regs() computes. */
	struct task_struct *task = (void *)bpf_get_current_task();
	char *stack = BPF_CORE_READ(task, stack);

	return stack ? (void *)(stack + KERNEL_STACK_SIZE - bpf_core_type_size(struct pt_regs))
		     : NULL;
}

static __always_inline int on_accept_exit(struct syscall_exit_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct task_struct *task = (void *)bpf_get_current_task();
	__s32 listen_fd = -1;
	__s32 fd = (__s32)ctx->ret;

	if (!saved_regs) {
		/* Kernels < 5.15: the enter tracepoint's record, exact when it exists. */
		__s32 *saved = bpf_map_lookup_elem(&accepting_fd, &tid);

		if (saved) {
			listen_fd = *saved;
			bpf_map_delete_elem(&accepting_fd, &tid);
		}
	}
	if (ctx->ret < 0 || !task_wanted(id >> 32))
		return 0;
	if (listen_fd < 0) {
		struct pt_regs *regs = saved_user_regs();

		if (regs)
			listen_fd = (__s32)PT_REGS_PARM1_CORE_SYSCALL(regs);
	}
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);

	return emit_accept(sock_of_fd(fdt, fd), listen_fd >= 0 ? sock_of_fd(fdt, listen_fd) : NULL,
			   fd, listen_fd, PROBE_TRACEPOINT);
}

/* One program for accept() and accept4(): user space attaches each to both syscalls'
 * tracepoints (probes.TWIN_TRACEPOINTS), whose records have one layout. Two copies would
 * cost the verifier twice at every start. */
SEC("tracepoint/syscalls/sys_enter_accept4")
int tp_enter_accept4(struct syscall_enter_ctx *ctx)
{
	return on_accept_enter(ctx);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int tp_exit_accept4(struct syscall_exit_ctx *ctx)
{
	return on_accept_exit(ctx);
}

/* ---- tracepoint, BTF pointer walk (kernels >= 6.2) ----
 * The same event with direct loads through BTF pointers instead of probe reads: from
 * bpf_get_current_task_btf() (5.11) to the fd table, then sock_of_fd_btf (fds.bpf.h).
 * User space loads this or tp_exit_accept4 (probes.py chooses from the kernel's BTF
 * and helpers), never both. */

static __always_inline int on_accept_exit_btf(struct syscall_exit_ctx *ctx)
{
	struct task_struct *current = bpf_get_current_task_btf();
	struct task_struct *task = untrusted_task(current);
	__s32 fd = (__s32)ctx->ret;

	if (ctx->ret < 0 || !task_wanted(task->tgid))
		return 0;
	/* bpf_task_pt_regs (5.15): the syscall's first argument is the listening fd. */
	struct pt_regs *regs = (void *)bpf_task_pt_regs(current);
	__s32 listen_fd = (__s32)PT_REGS_PARM1_SYSCALL(regs);
	struct fdtable *fdt = task->files->fdt;

	return build_accept(sock_of_fd_btf(fdt, fd),
			    listen_fd >= 0 ? sock_of_fd_btf(fdt, listen_fd) : NULL, fd, listen_fd,
			    PROBE_TRACEPOINT, true);
}

SEC("tracepoint/syscalls/sys_exit_accept4") /* and sys_exit_accept, as tp_exit_accept4 */
int tp_exit_accept4_btf(struct syscall_exit_ctx *ctx)
{
	return on_accept_exit_btf(ctx);
}

/* ---- accept-queue latency ----
 * When a child joins its listener's accept queue, stamped per child socket in
 * queue_stamps (queue_stamps.bpf.h); the accept takes the stamp (build_accept). */

/* fexit kernels: one run per passive child, when inet_csk_complete_hashdance puts it on
 * its listener's queue (it returns the child, or NULL if the listener was closed), instead
 * of a run on every state change of every TCP socket (inet_sock_set_state below: five or
 * more per connection at each end). Not inet_csk_reqsk_queue_add, which does the queueing:
 * the same file calls it, and where the compiler inlined that call (6.1) its fexit never
 * ran. TCP Fast Open children, queued without the hashdance, get no stamp (their accept
 * reports no latency, as at ESTABLISHED, which they may reach only after it). */
SEC("fexit/inet_csk_complete_hashdance")
int BPF_PROG(stamp_queued, struct sock *listener, struct sock *child, void *req, bool own_req,
	     struct sock *queued)
{
	if (queued)
		stamp_queued_child(child_stamp_id(queued, true), bpf_ktime_get_ns());
	return 0;
}

/* Elsewhere (kprobe, tracepoint): the child's SYN_RECV -> ESTABLISHED change. */

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(stamp_established, struct sock *sk, int oldstate, int newstate)
{
	/* A passive open's child goes SYN_RECV -> ESTABLISHED as it enters the accept queue. */
	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED)
		stamp_queued_child(child_stamp_id(sk, true), bpf_ktime_get_ns());
	return 0;
}
