/* SPDX-License-Identifier: GPL-2.0 */
/* In-kernel aggregation for the metrics-only and summary modes (issue 12 item 1).
 *
 * build_accept (accept.bpf.h) calls aggregate_accept() for every accept that passed the
 * filters when `aggregate` is set, and submits a ring-buffer record only when
 * `emit_records` is set (someone prints lines).
 *
 * Keyed by the LISTENING socket: its network namespace, bound address (0.0.0.0 / :: for a
 * wildcard listener, never the connection's local address), family and port, plus the
 * accepting task's cgroup id so that user space can name the container. Nothing a client or
 * a process controls (client address, comm) is part of the listener key: the number of
 * entries is bounded by the listeners on the host, and by max_entries in any case (a full
 * map counts an overflow, exported by user space).
 *
 * User space (aggregate.py) reads the maps, by the names of these structs, maps and
 * fields in the object's BTF. */
#ifndef TCPACCEPT_AGGREGATE_BPF_H
#define TCPACCEPT_AGGREGATE_BPF_H

#include "accepter.bpf.h"
#include "kread.bpf.h"

/* log2 buckets of microseconds, bcc-style: slot 0 holds 0 us, slot k (k >= 1) holds
 * [2^(k-1), 2^k) us; the last slot also takes everything longer (2^30 us = 18 min). */
#define LATENCY_SLOTS 32

/* Only summary mode (-s) reads the remotes map and the per-interval backlog peaks: the
 * metrics-only mode skips that work. */
const volatile bool aggregate_remotes = false;

struct listener_key {
	__u64 cgroup_id;  /* cgroup v2 id of the accepting task */
	__u32 netns;      /* network namespace inode of the listener */
	__u16 family;     /* the listener's: AF_INET or AF_INET6 (a dual-stack listener is 6) */
	__u16 lport;      /* host order */
	__u8 laddr[16];   /* the listener's bound address; IPv4 in the first 4 bytes */
};

/* One per listener and CPU (per-CPU hash: no atomics on the accept path). User space sums
 * the counts, takes the maximum of the peaks and the last-seen CPU's last values. */
struct listener_stats {
	__u64 accepts;
	__u64 latency_count;   /* accepts whose queue latency was measured */
	__u64 latency_sum_ns;
	__u64 last_seen_ns;    /* bpf_ktime_get_ns() of this CPU's last accept */
	__u64 latency_slots[LATENCY_SLOTS];
	__u32 backlog;         /* accept queue length left after this CPU's last accept */
	__u32 backlog_peak;    /* highest backlog seen in interval peak_epoch */
	__u32 backlog_max;     /* listen() limit */
	__u32 peak_epoch;      /* summary interval number backlog_peak belongs to */
	__u32 pid;             /* last accepting process (a value for display, not a key) */
	__u32 pad;
	char comm[TASK_COMM_LEN];
};

struct remote_count_key {
	struct listener_key listener;
	__u8 raddr[16];        /* IPv4 clients as IPv4-mapped IPv6 */
};

/* Indices of aggregate_counters (per-CPU, summed by user space). */
enum aggregate_counter {
	AGG_LISTENERS_FULL = 0, /* accepts not aggregated: listener_stats was full */
	AGG_REMOTE_INSERTS = 1, /* new keys in remote_counts (user space: inserts - entries
				 * = how many the LRU evicted) */
	AGG_COUNTERS = 2,
};

/* 32 B key, 328 B value per possible CPU. Preallocated: with entries allocated as listeners
 * appeared (BPF_F_NO_PREALLOC), a burst of new listeners had the update fail with -ENOMEM
 * (allocation from a BPF program cannot wait for memory) while the map was far from full:
 * measured on 6.18, 119 and 221 of 4,000 new listeners accepting within 0.2 s were counted
 * as overflow (tests/kernel/test_big_hosts.py). A preallocated map takes entries from a
 * free list that is empty only when the map is full. User space lowers max_entries on hosts
 * with many CPUs (aggregate.size_maps: a 64 MiB ceiling) and to 1 when nothing aggregates. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct listener_key);
	__type(value, struct listener_stats);
} listener_stats SEC(".maps");

/* Top remotes for the summary: bounded by the LRU, so a scan costs nothing but evictions.
 * LRU maps are preallocated: user space shrinks it to 1 entry unless -s reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct remote_count_key);
	__type(value, __u64);
} remote_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AGG_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} aggregate_counters SEC(".maps");

/* The summary interval number, advanced by user space when it closes an interval. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} aggregate_epoch SEC(".maps");

/* All zero: the initial value of a new listener's entry (328 bytes do not fit the stack
 * next to build_accept's own locals). Never written. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct listener_stats);
} listener_stats_zero SEC(".maps");

/* Never read: puts the key/value types into the object's BTF for user space. */
const struct remote_count_key *const remote_count_key_btf = 0;

static __always_inline void count_aggregate(__u32 counter)
{
	__u64 *slot = bpf_map_lookup_elem(&aggregate_counters, &counter);

	if (slot)
		*slot += 1;
}

/* Number of significant bits (0 for 0): the log2 slot of a microsecond count. */
static __always_inline __u32 latency_slot(__u64 latency_ns)
{
	__u64 v = latency_ns / 1000;
	__u32 bits = 0;

	if (v >> 32) { v >>= 32; bits += 32; }
	if (v >> 16) { v >>= 16; bits += 16; }
	if (v >> 8) { v >>= 8; bits += 8; }
	if (v >> 4) { v >>= 4; bits += 4; }
	if (v >> 2) { v >>= 2; bits += 2; }
	if (v >> 1) { v >>= 1; bits += 1; }
	bits += v; /* v is 0 or 1 here */
	return bits < LATENCY_SLOTS ? bits : LATENCY_SLOTS - 1;
}

static __always_inline struct listener_stats *listener_entry(struct listener_key *key)
{
	struct listener_stats *stats = bpf_map_lookup_elem(&listener_stats, key);
	__u32 zero = 0;

	if (stats)
		return stats;
	struct listener_stats *initial = bpf_map_lookup_elem(&listener_stats_zero, &zero);

	if (!initial)
		return NULL;
	/* -EEXIST: another CPU added it first, fine (found below). -E2BIG: full, counted. */
	bpf_map_update_elem(&listener_stats, key, initial, BPF_NOEXIST);
	stats = bpf_map_lookup_elem(&listener_stats, key);
	if (!stats)
		count_aggregate(AGG_LISTENERS_FULL);
	return stats;
}

static __always_inline void count_remote(struct listener_key *listener, const __u8 *raddr)
{
	struct remote_count_key key;
	__u64 one = 1, *count;

	__builtin_memcpy(&key.listener, listener, sizeof(key.listener));
	__builtin_memcpy(key.raddr, raddr, sizeof(key.raddr));
	count = bpf_map_lookup_elem(&remote_counts, &key);
	if (count) {
		__sync_fetch_and_add(count, 1);
		return;
	}
	if (bpf_map_update_elem(&remote_counts, &key, &one, BPF_NOEXIST) == 0)
		count_aggregate(AGG_REMOTE_INSERTS);
	else if ((count = bpf_map_lookup_elem(&remote_counts, &key)))
		__sync_fetch_and_add(count, 1); /* another CPU inserted it meanwhile */
}

/* One accept that passed the filters. Without its listener, the child's local address
 * stands in for the bound one. */
static __always_inline void aggregate_accept(const struct accept_facts *facts,
					     const bool direct)
{
	struct sock *listener = facts->listener;
	struct sock *owner = listener ? listener : facts->child;
	struct listener_key key;
	__u16 family = KREAD(direct, owner, __sk_common.skc_family);

	__builtin_memset(&key, 0, sizeof(key));
	key.cgroup_id = accepting_cgroup_id(facts, direct);
	key.netns = facts->netns;
	key.family = family;
	key.lport = facts->lport;
	if (family == AF_INET) {
		__be32 bound = KREAD(direct, owner, __sk_common.skc_rcv_saddr);

		__builtin_memcpy(key.laddr, &bound, 4);
	} else if (direct) {
		__builtin_memcpy(key.laddr, owner->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
	} else {
		BPF_CORE_READ_INTO(&key.laddr, owner, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
	}

	struct listener_stats *stats = listener_entry(&key);

	if (!stats)
		return;
	stats->accepts += 1;
	stats->last_seen_ns = facts->now;
	if (facts->latency_measured) {
		stats->latency_count += 1;
		stats->latency_sum_ns += facts->latency_ns;
		stats->latency_slots[latency_slot(facts->latency_ns) & (LATENCY_SLOTS - 1)] += 1;
	}
	if (listener) {
		stats->backlog = KREAD(direct, listener, sk_ack_backlog);
		stats->backlog_max = KREAD(direct, listener, sk_max_ack_backlog);
	}
	stats->pid = facts->id >> 32;
	copy_accepting_comm(stats->comm, facts, direct);
	if (aggregate_remotes) {
		__u32 zero = 0;
		__u32 *epoch = bpf_map_lookup_elem(&aggregate_epoch, &zero);

		if (epoch) {
			if (stats->peak_epoch != *epoch || stats->backlog > stats->backlog_peak) {
				stats->peak_epoch = *epoch;
				stats->backlog_peak = stats->backlog;
			}
		}
		count_remote(&key, facts->raddr);
	}
}

#endif
