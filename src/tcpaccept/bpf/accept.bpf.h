/* SPDX-License-Identifier: GPL-2.0 */
/* The event builder every attach method shares: who accepted (pid, comm, PID
 * namespaces), the filters, the listener's queue, the record or the in-kernel count.
 * Included once, by tcpaccept.bpf.c, after maps.bpf.h. */
#ifndef TCPACCEPT_ACCEPT_BPF_H
#define TCPACCEPT_ACCEPT_BPF_H

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

static __always_inline bool is_v4_mapped(const __u8 *a)
{
	for (int i = 0; i < 10; i++)
		if (a[i])
			return false;
	return a[10] == 0xff && a[11] == 0xff;
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&lost_events, &zero);

	if (lost)
		*lost += 1; /* per-CPU slot: no atomics needed */
}

#include "aggregate.bpf.h"

/* A kernel field: loaded straight through a BTF pointer when `direct` (the verifier checks
 * the access; no helper call), else read with bpf_probe_read_kernel. `direct` is a constant
 * at every call site (all is inlined): each program is compiled with only one of the two.
 * ___arrow is bpf_core_read.h's "a->b->c" builder, the one BPF_CORE_READ itself uses. */
#define KREAD(direct, src, ...) \
	((direct) ? ___arrow((src), __VA_ARGS__) : BPF_CORE_READ((src), __VA_ARGS__))

/* Retypes a pointer for direct loads (6.2; the verifier turns the call into a move). */
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id__k) __ksym __weak;

static __always_inline struct mptcp_sock *mptcp_btf(struct sock *sk)
{
	return bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct mptcp_sock));
}

/* One event from a child socket (and its listener, if known). With `direct`, both are BTF
 * pointers and the task is read through bpf_get_current_task_btf() instead of helpers (the
 * BTF-walking tracepoint); otherwise they are plain kernel addresses (emit_accept). */
static __always_inline int build_accept(struct sock *child, struct sock *listener, __s32 fd,
					__s32 listen_fd, __u8 probe, const bool direct)
{
	struct task_struct *task = direct ? bpf_get_current_task_btf() : NULL;
	__u64 id = direct ? (__u64)task->tgid << 32 | (__u32)task->pid
			  : bpf_get_current_pid_tgid();
	__u16 family, protocol;
	struct accept_event *e;

	if (!child)
		return 0;
	family = KREAD(direct, child, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	/* A u16 since 5.6, a bitfield before; `direct` needs 6.2, so it is the u16. */
	protocol = direct ? child->sk_protocol : BPF_CORE_READ_BITFIELD_PROBED(child, sk_protocol);
	/* An MPTCP listener's accept() hands out the MPTCP socket (it carries the first
	 * subflow's addresses): it is a TCP connection to every user and every filter. fexit
	 * and kprobe never see it here: inet_csk_accept returns the TCP subflow. */
	if (protocol != IPPROTO_TCP && protocol != IPPROTO_MPTCP)
		return 0;
	if (bpf_core_field_exists(struct mptcp_sock, first)) {
		/* Addresses, port, queue and the ESTABLISHED stamp live on the first subflows
		 * (a plain TCP client of an MPTCP listener gets a TCP child: only the listener
		 * is an MPTCP socket then). */
		struct sock *subflow;

		if (protocol == IPPROTO_MPTCP) {
			subflow = direct ? mptcp_btf(child)->first
					 : BPF_CORE_READ((struct mptcp_sock *)child, first);
			if (subflow)
				child = subflow;
		}
		if (listener && (direct ? listener->sk_protocol
				: BPF_CORE_READ_BITFIELD_PROBED(listener, sk_protocol)) == IPPROTO_MPTCP) {
			subflow = direct ? mptcp_btf(listener)->first
					 : BPF_CORE_READ((struct mptcp_sock *)listener, first);
			if (subflow)
				listener = subflow;
		}
	}

	/* The listener's port: a child reset before accept() has had its own cleared. */
	__u16 lport = KREAD(direct, listener ? listener : child, __sk_common.skc_num);

	if (filter_lport && !bpf_map_lookup_elem(&lport_filter, &lport))
		return 0;

	__u32 netns = KREAD(direct, child, __sk_common.skc_net.net, ns.inum);

	if (filter_netns && netns != target_netns)
		return 0;

	/* Filled field by field: an initializer would cost an anonymous copy in .rodata. */
	struct remote_key remote;
	__u8 laddr[16];

	__builtin_memset(&remote, 0, sizeof(remote));
	__builtin_memset(laddr, 0, sizeof(laddr));
	remote.prefixlen = 128;

	if (family == AF_INET) {
		/* IPv4 as IPv4-mapped IPv6 in the filter key; the event keeps 4 bytes. */
		remote.addr[10] = 0xff;
		remote.addr[11] = 0xff;
		__be32 daddr = KREAD(direct, child, __sk_common.skc_daddr);
		__be32 saddr = KREAD(direct, child, __sk_common.skc_rcv_saddr);

		__builtin_memcpy(&remote.addr[12], &daddr, 4);
		__builtin_memcpy(laddr, &saddr, 4);
	} else if (direct) {
		__builtin_memcpy(remote.addr, child->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(laddr, child->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
	} else {
		BPF_CORE_READ_INTO(&remote.addr, child, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&laddr, child, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
	}
	if (filter_family) {
		__u32 effective = family == AF_INET || is_v4_mapped(remote.addr) ? 4 : 6;

		if (effective != target_family)
			return 0;
	}
	if (filter_remote && !bpf_map_lookup_elem(&remote_filter, &remote))
		return 0;
	if (in_pid_namespace && !shown_pid_tgid(&id)) {
		/* No PID in the tracer's namespace: counted, not shown. */
		__u32 zero = 0;
		__u64 *outside = bpf_map_lookup_elem(&outside_pid_namespace, &zero);

		if (outside)
			*outside += 1;
		return 0;
	}

	__u64 now = bpf_ktime_get_ns(), latency_ns = 0;
	bool latency_measured = false;

	if (queue_latency) {
		__u64 child_key = (__u64)child;
		__u64 *established = bpf_map_lookup_elem(&established_at, &child_key);

		/* A consumed stamp is zeroed, not deleted: a delete takes the LRU's locks (~100 ns
		 * per accept); the entry ages out of the LRU like a never-accepted child's. */
		if (established && *established) {
			latency_measured = true;
			if (now > *established)
				latency_ns = now - *established;
			*established = 0;
		}
	}
	if (aggregate)
		aggregate_accept(listener, child, lport, netns, remote.addr, now, latency_measured,
				 latency_ns, id, task, direct);
	if (!emit_records) /* nobody prints lines: the maps are the output */
		return 0;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	e->ts_ns = now;
	/* What the helpers compute, read through the task's BTF pointers when `direct`. */
	e->cgroup_id = direct ? task->cgroups->dfl_cgrp->kn->id : bpf_get_current_cgroup_id();
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->uid = direct ? task->cred->uid.val : (__u32)bpf_get_current_uid_gid();
	e->netns = netns;
	e->fd = fd;
	e->listen_fd = listen_fd;
	e->family = family;
	e->lport = lport;
	e->rport = bpf_ntohs(KREAD(direct, child, __sk_common.skc_dport));
	e->probe = probe;
	e->pad = 0;
	if (family == AF_INET) {
		__builtin_memset(e->raddr, 0, sizeof(e->raddr));
		__builtin_memcpy(e->raddr, &remote.addr[12], 4);
	} else {
		__builtin_memcpy(e->raddr, remote.addr, sizeof(e->raddr));
	}
	__builtin_memcpy(e->laddr, laddr, sizeof(e->laddr));
	/* The listener's queue, not the child's: what is still waiting after this accept. */
	if (listener) {
		e->backlog = KREAD(direct, listener, sk_ack_backlog);
		e->backlog_max = KREAD(direct, listener, sk_max_ack_backlog);
	} else {
		e->backlog = 0;
		e->backlog_max = 0;
	}
	e->queue_latency_ns = latency_ns;
	if (!direct)
		accepting_comm(e->comm);
	else if (task->flags & PF_IO_WORKER) /* as accepting_comm, without probe reads */
		__builtin_memcpy(e->comm, task->group_leader->comm, sizeof(e->comm));
	else
		__builtin_memcpy(e->comm, task->comm, sizeof(e->comm));
	/* Wake the reader once per batch of events on this CPU (an eighth of the ring, set by
	 * user space), not per event: a wakeup per event cost the traced server more than
	 * everything else together, and asking the ring how much data waits
	 * (bpf_ringbuf_query) cost ~0.8 us by itself. User space also polls on a short
	 * timeout, so a lone event is still printed within that time. */
	__u32 zero = 0;
	__u32 *unannounced = bpf_map_lookup_elem(&events_since_wakeup, &zero);
	__u64 wakeup = BPF_RB_NO_WAKEUP;

	if (unannounced && ++*unannounced >= wakeup_batch) {
		*unannounced = 0;
		wakeup = BPF_RB_FORCE_WAKEUP;
	}
	bpf_ringbuf_submit(e, wakeup);
	return 0;
}

/* child and listener are plain kernel addresses: every field through probe reads. */
static __always_inline int emit_accept(struct sock *child, struct sock *listener, __s32 fd,
				       __s32 listen_fd, __u8 probe)
{
	return build_accept(child, listener, fd, listen_fd, probe, false);
}

#endif
