/* SPDX-License-Identifier: GPL-2.0 */
/* Who accepted: the accepting task's ids as the tracer shows them (PID namespaces), its
 * name, its cgroup, and the filters on it; and struct accept_facts, what one accept is made
 * of, handed to both consumers: the record (accept.bpf.h) and the in-kernel count
 * (aggregate.bpf.h). */
#ifndef TCPACCEPT_ACCEPTER_BPF_H
#define TCPACCEPT_ACCEPTER_BPF_H

#include "maps.bpf.h"
#include "kread.bpf.h"

/* One accept that passed the filters. `listener` may be NULL (the attach method could not
 * find it). With `direct` (the program that walks BTF pointers), `task` is the accepting
 * task's BTF pointer and child and listener are BTF pointers; otherwise task is NULL and
 * both sockets are plain kernel addresses, read with probe reads. `direct` itself is not a
 * member but an argument next to the facts: it must stay a compile-time constant. */
struct accept_facts {
	struct sock *child;
	struct sock *listener;
	struct task_struct *task;
	__u64 id;               /* the accepting task's tgid << 32 | tid, as shown */
	__u64 now;              /* bpf_ktime_get_ns() */
	__u64 latency_ns;       /* time in the accept queue, if latency_measured */
	const __u8 *raddr;      /* the client, IPv4 as IPv4-mapped IPv6 (16 bytes) */
	const __u8 *laddr;      /* the child's local address, IPv4 in the first 4 bytes */
	__u32 netns;            /* network namespace inode of the child */
	__s32 fd;               /* the new fd, -1 where the attach method does not know it */
	__s32 listen_fd;        /* the listener's fd, likewise */
	__u16 family;           /* the child's */
	__u16 lport;            /* the listener's port, host order */
	__u8 probe;             /* enum accept_probe: the attach method */
	bool latency_measured;
};

/* The accepting task's name. io_uring's io-wq (iou-wrk-N) and SQPOLL (iou-sqp-N) threads
 * accept on their process's behalf: name the process (its group leader), as for its pid. */
static __always_inline void accepting_comm(char comm[TASK_COMM_LEN])
{
	struct task_struct *task = (void *)bpf_get_current_task();

	if (BPF_CORE_READ(task, flags) & PF_IO_WORKER) {
		struct task_struct *leader = BPF_CORE_READ(task, group_leader);

		bpf_core_read_str(comm, TASK_COMM_LEN, &leader->comm);
	} else
		bpf_get_current_comm(comm, TASK_COMM_LEN);
}

#define MAX_PID_NS_LEVEL 32 /* the kernel's limit on PID namespace nesting */

/* The number at the tracer's level of the current task's struct pid: for a task in a
 * namespace nested below the tracer's (a container in a container), which the helper
 * below does not answer for. False if no ancestor of its namespace is the tracer's. */
static __always_inline bool nested_pid_tgid(__u64 *ids)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct pid *thread = BPF_CORE_READ(task, thread_pid);
	struct pid *leader = BPF_CORE_READ(task, group_leader, thread_pid);
	unsigned long numbers = bpf_core_field_offset(struct pid, numbers);
	struct pid_namespace *ns = NULL;
	struct upid upid;

	if (!thread || !leader)
		return false;
	unsigned int level = BPF_CORE_READ(thread, level);

	if (level >= MAX_PID_NS_LEVEL)
		return false;
	bpf_probe_read_kernel(&ns, sizeof(ns), (void *)thread + numbers +
			      level * sizeof(struct upid) + offsetof(struct upid, ns));
	for (int i = 0; i < MAX_PID_NS_LEVEL && ns; i++) {
		if (BPF_CORE_READ(ns, ns.inum) == pidns_ino) {
			level = BPF_CORE_READ(ns, level);
			if (level >= MAX_PID_NS_LEVEL)
				return false;
			if (bpf_probe_read_kernel(&upid, sizeof(upid), (void *)thread + numbers +
						  level * sizeof(struct upid)))
				return false;
			*ids = (__u32)upid.nr;
			if (bpf_probe_read_kernel(&upid, sizeof(upid), (void *)leader + numbers +
						  level * sizeof(struct upid)))
				return false;
			*ids |= (__u64)(__u32)upid.nr << 32;
			return true;
		}
		ns = BPF_CORE_READ(ns, parent);
	}
	return false;
}

/* tgid << 32 | tid of the current task as the tracer shows it: the initial namespace's
 * numbers, or those of the tracer's PID namespace (false if it has none there). */
static __always_inline bool shown_pid_tgid(__u64 *ids)
{
	struct bpf_pidns_info ns;

	if (!in_pid_namespace) {
		*ids = bpf_get_current_pid_tgid();
		return true;
	}
	/* 5.7+; it answers only for tasks whose own namespace is the tracer's. */
	if (!bpf_get_ns_current_pid_tgid(pidns_dev, pidns_ino, &ns, sizeof(ns))) {
		*ids = (__u64)ns.tgid << 32 | ns.pid;
		return true;
	}
	*ids = 0;
	return nested_pid_tgid(ids);
}

static __always_inline __u32 shown_tgid(void)
{
	__u64 ids = 0;

	shown_pid_tgid(&ids);
	return ids >> 32;
}

/* Filters that only need the current task: checked before any socket is read. */
static __always_inline bool task_wanted(__u32 tgid)
{
	if (filter_pid && in_pid_namespace) /* -p names PIDs of the tracer's namespace */
		tgid = shown_tgid(); /* 0 (never in the filter) for a task it cannot see */
	if (filter_pid && !bpf_map_lookup_elem(&pid_filter, &tgid))
		return false;
	if (filter_uid && (__u32)bpf_get_current_uid_gid() != target_uid)
		return false;
	if (filter_comm) {
		char comm[TASK_COMM_LEN];

		accepting_comm(comm);
		for (int i = 0; i < TASK_COMM_LEN; i++) {
			if (comm[i] != target_comm[i])
				return false;
			if (!comm[i])
				break;
		}
	}
	if (filter_cgroup && bpf_current_task_under_cgroup(&cgroup_filter, 0) != 1)
		return false;
	if (filter_cgroupmap) {
		__u64 cgroup_id = bpf_get_current_cgroup_id();

		if (!bpf_map_lookup_elem(&cgroupmap, &cgroup_id))
			return false;
	}
	if (filter_containers) {
		__u64 cgroup_id = bpf_get_current_cgroup_id();

		if (!bpf_map_lookup_elem(&container_cgroups, &cgroup_id))
			return false;
	}
	if (filter_mntnsmap) {
		struct task_struct *task = (void *)bpf_get_current_task();
		__u64 mntns = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);

		if (!bpf_map_lookup_elem(&mntnsmap, &mntns))
			return false;
	}
	return true;
}

/* cgroup v2 id of the accepting task: bpf_get_current_cgroup_id(), or what it computes
 * when `direct`. */
static __always_inline __u64 accepting_cgroup_id(const struct accept_facts *facts,
						 const bool direct)
{
	struct task_struct *task = facts->task;

	return direct ? task->cgroups->dfl_cgrp->kn->id : bpf_get_current_cgroup_id();
}

/* accepting_comm() into comm; with `direct`, through the task's BTF pointer, no probe read.
 * comm is 8-byte aligned (accept_event's and listener_stats' comm are): said so, the copy
 * is two 8-byte moves instead of sixteen 1-byte ones. */
static __always_inline void copy_accepting_comm(char comm[TASK_COMM_LEN],
						const struct accept_facts *facts,
						const bool direct)
{
	struct task_struct *task = facts->task;
	char *to = __builtin_assume_aligned(comm, 8);

	if (!direct)
		accepting_comm(comm);
	else if (task->flags & PF_IO_WORKER)
		__builtin_memcpy(to, task->group_leader->comm, TASK_COMM_LEN);
	else
		__builtin_memcpy(to, task->comm, TASK_COMM_LEN);
}

#endif
