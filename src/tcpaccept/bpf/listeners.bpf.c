// SPDX-License-Identifier: GPL-2.0
/* Every TCP listener of the machine, from the kernel: a task_file iterator (5.8+) visits each
 * open file of each task in the reader's pid namespace; for a socket in LISTEN state it writes
 * one struct listener_record. It needs only CAP_BPF + CAP_PERFMON (no setns into network
 * namespaces, no /proc/PID/fd of other users), sees listeners in every network namespace,
 * and names the owner. A listener shared by forked workers comes once per process: user space
 * deduplicates by sock_inode.
 *
 * The kernel types it shares with the accept tracer (struct sock, socket, file, task_struct,
 * pid) come from kernel_types.h; only what the tracer never reads is defined below. Reads go
 * through BPF_CORE_READ (bpf_probe_read_kernel), which works on every kernel with task_file
 * iterators, trusted BTF pointers or not. */
#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "listeners.h"

#define SOCK_STREAM 1
#define TCP_LISTEN 10
#define S_IFMT 00170000
#define S_IFSOCK 0140000

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

/* 6.18 split the drop counter: a socket with sk_drop_counters set counts there instead. */
struct numa_drop_counters {
	atomic_t drops0;
	atomic_t drops1;
};

struct sock___drop_counters {
	struct numa_drop_counters *sk_drop_counters;
};

struct request_sock_queue {
	atomic_t qlen;
};

struct inet_connection_sock {
	struct request_sock_queue icsk_accept_queue;
};

struct inode {
	unsigned short i_mode;
	unsigned long i_ino;
};

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
};

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
};

#pragma clang attribute pop

char LICENSE[] SEC("license") = "GPL";

/* Never written by the program: keeps the record's BTF in the object for user space. */
struct listener_record unused_listener_record;

static __always_inline __u32 drops_of(struct sock *sk)
{
	__u32 drops = BPF_CORE_READ(sk, sk_drops.counter);
	struct sock___drop_counters *split = (void *)sk;

	if (bpf_core_field_exists(split->sk_drop_counters)) {
		struct numa_drop_counters *counters = BPF_CORE_READ(split, sk_drop_counters);

		if (counters)
			drops += BPF_CORE_READ(counters, drops0.counter) +
				 BPF_CORE_READ(counters, drops1.counter);
	}
	return drops;
}

/* The owner's process id as the reader's pid namespace numbers it (the iterator shows only
 * tasks of that namespace, so the number exists): numbers[] of the group leader's struct pid
 * at the reader's level. */
static __always_inline __u32 owner_pid(struct task_struct *task)
{
	struct task_struct *reader = (void *)bpf_get_current_task();
	unsigned int level = BPF_CORE_READ(reader, thread_pid, level);
	struct pid *pid = BPF_CORE_READ(task, group_leader, thread_pid);
	struct upid upid = {};

	bpf_probe_read_kernel(&upid, sizeof(upid), &pid->numbers[level & 31]);
	return upid.nr;
}

/* A read() of the iterator returns only once it has as many bytes as asked for, and the
 * kernel walk in between does not yield the CPU (PREEMPT_NONE/VOLUNTARY kernels): with few
 * listeners among 100,000 files, one read() held a CPU for 60-200 ms, stalling the tracer's
 * event loop scheduled behind it on the same CPU. An empty record (sock_inode 0) every
 * TICK_FILES files fills the buffer, so read() returns (and user space may be preempted)
 * every LISTENER_READ_BYTES / sizeof(record) * TICK_FILES files at most, ~3,600 here. */
#define TICK_FILES 64

SEC("iter/task_file")
int dump_listeners(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	struct task_struct *task = ctx->task;
	struct listener_record rec = {};
	struct inode *inode;
	struct socket *socket;
	struct sock *sk;

	if (!file || !task)
		return 0;
	if ((ctx->meta->seq_num & (TICK_FILES - 1)) == 0)
		bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	inode = BPF_CORE_READ(file, f_inode);
	if ((BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	socket = BPF_CORE_READ(file, private_data); /* NULL for an O_PATH file on a socket */
	if (!socket)
		return 0;
	sk = BPF_CORE_READ(socket, sk);
	if (!sk || BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_LISTEN)
		return 0;
	rec.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (rec.family != AF_INET && rec.family != AF_INET6)
		return 0;
	if (BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) != IPPROTO_TCP ||
	    BPF_CORE_READ_BITFIELD_PROBED(sk, sk_type) != SOCK_STREAM)
		return 0;

	rec.sock_inode = BPF_CORE_READ(inode, i_ino);
	rec.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	rec.pid = owner_pid(task);
	rec.backlog = BPF_CORE_READ(sk, sk_ack_backlog);
	rec.backlog_max = BPF_CORE_READ(sk, sk_max_ack_backlog);
	rec.syn_queue = BPF_CORE_READ((struct inet_connection_sock *)sk,
				      icsk_accept_queue.qlen.counter);
	rec.drops = drops_of(sk);
	rec.lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (rec.family == AF_INET)
		bpf_core_read(&rec.laddr, 4, &sk->__sk_common.skc_rcv_saddr);
	else
		bpf_core_read(&rec.laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
	BPF_CORE_READ_STR_INTO(&rec.comm, task, comm);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}
