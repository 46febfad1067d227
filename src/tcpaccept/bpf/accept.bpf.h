/* SPDX-License-Identifier: GPL-2.0 */
/* The event builder every attach method shares: from a child socket (and its listener)
 * to the facts of the accept (struct accept_facts), through the socket filters, handed to
 * the in-kernel count (aggregate.bpf.h) and to the ring-buffer record (struct accept_event,
 * tcpaccept.h). Who accepted and the task filters: accepter.bpf.h. */
#ifndef TCPACCEPT_ACCEPT_BPF_H
#define TCPACCEPT_ACCEPT_BPF_H

#include "accepter.bpf.h"
#include "aggregate.bpf.h"
#include "kread.bpf.h"
#include "queue_stamps.bpf.h"
#include <bpf/bpf_endian.h>

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

static __always_inline struct mptcp_sock *mptcp_btf(struct sock *sk)
{
	return bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct mptcp_sock));
}

/* The ring-buffer record of one accept, for the sinks that print lines. */
static __always_inline void submit_record(const struct accept_facts *facts, const bool direct)
{
	/* Out of the struct first: inside KREAD (a CO-RE access chain) a member of the facts
	 * would be relocated against the kernel's BTF, which has no struct accept_facts. */
	struct sock *child = facts->child, *listener = facts->listener;
	struct task_struct *task = facts->task;
	struct accept_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_lost();
		return;
	}
	e->ts_ns = facts->now;
	/* What the helpers compute, read through the task's BTF pointers when `direct`. */
	e->cgroup_id = accepting_cgroup_id(facts, direct);
	e->pid = facts->id >> 32;
	e->tid = (__u32)facts->id;
	e->uid = direct ? task->cred->uid.val : (__u32)bpf_get_current_uid_gid();
	e->netns = facts->netns;
	e->fd = facts->fd;
	e->listen_fd = facts->listen_fd;
	e->family = facts->family;
	e->lport = facts->lport;
	e->rport = bpf_ntohs(KREAD(direct, child, __sk_common.skc_dport));
	e->probe = facts->probe;
	e->pad = 0;
	if (facts->family == AF_INET) {
		__builtin_memset(e->raddr, 0, sizeof(e->raddr));
		__builtin_memcpy(e->raddr, &facts->raddr[12], 4);
	} else {
		__builtin_memcpy(e->raddr, facts->raddr, sizeof(e->raddr));
	}
	__builtin_memcpy(e->laddr, facts->laddr, sizeof(e->laddr));
	/* The listener's queue, not the child's: what is still waiting after this accept. */
	if (listener) {
		e->backlog = KREAD(direct, listener, sk_ack_backlog);
		e->backlog_max = KREAD(direct, listener, sk_max_ack_backlog);
	} else {
		e->backlog = 0;
		e->backlog_max = 0;
	}
	e->queue_latency_ns = facts->latency_ns;
	copy_accepting_comm(e->comm, facts, direct);
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
}

/* One event from a child socket (and its listener, if known). With `direct`, both are BTF
 * pointers and the task is read through bpf_get_current_task_btf() instead of helpers (the
 * BTF-walking tracepoint); otherwise they are plain kernel addresses (emit_accept). */
static __always_inline int build_accept(struct sock *child, struct sock *listener, __s32 fd,
					__s32 listen_fd, __u8 probe, const bool direct)
{
	struct task_struct *task = direct ? current_task_untrusted() : NULL;
	__u64 id = direct ? (__u64)task->tgid << 32 | (__u32)task->pid
			  : bpf_get_current_pid_tgid();
	__u16 family, protocol;

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

	__u64 queued_ns;

	if (queue_latency && take_queue_stamp(child_stamp_id(child, direct), &queued_ns)) {
		latency_measured = true;
		if (now > queued_ns)
			latency_ns = now - queued_ns;
	}
	struct accept_facts facts = {
		.child = child, .listener = listener, .task = task, .id = id, .now = now,
		.latency_ns = latency_ns, .raddr = remote.addr, .laddr = laddr, .netns = netns,
		.fd = fd, .listen_fd = listen_fd, .family = family, .lport = lport, .probe = probe,
		.latency_measured = latency_measured,
	};

	if (aggregate)
		aggregate_accept(&facts, direct);
	if (emit_records) /* else nobody prints lines: the maps are the output */
		submit_record(&facts, direct);
	return 0;
}

/* child and listener are plain kernel addresses: every field through probe reads. */
static __always_inline int emit_accept(struct sock *child, struct sock *listener, __s32 fd,
				       __s32 listen_fd, __u8 probe)
{
	return build_accept(child, listener, fd, listen_fd, probe, false);
}

#endif
