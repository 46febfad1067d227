/* SPDX-License-Identifier: GPL-2.0 */
/* When each child joined its listener's accept queue, kept until its accept reads it: the
 * accept-queue latency.
 *
 * A set-associative table in a plain array, not a hash map: the child's identity picks a
 * set of STAMP_WAYS slots (one cache line); a stamp takes a free slot, its own, or the set's
 * oldest. The identity is the connection's, not the socket's address (the verifier allows
 * no arithmetic on a socket pointer): the kernel's hash of the 4-tuple and network
 * namespace (skc_hash, set when the child is hashed, before it is queued) and the remote
 * port. Measured on the tracepoint method here, the LRU hash it replaces cost most of the
 * latency's price: its update (every child is stamped, and with consumed stamps left to age
 * out each insert evicted) and its lookup at accept each cost several hundred ns; here
 * both are an inlined array index and a few loads and stores. A child that stays queued
 * while STAMP_WAYS newer children land in its set loses its stamp (its accept then reports
 * no latency, as a child evicted from the LRU did); with stamp_sets sets that takes many
 * thousands of children waiting at once.
 *
 * A slot is written id = 0, time, id and read id, time, id: an accept that races with the
 * reuse of its slot sees the identity change and reports no latency rather than another
 * child's. (The compiler keeps that order; x86 keeps it between CPUs, arm64 may not, which
 * can only matter for a child waiting while its set is recycled.) */
#ifndef TCPACCEPT_QUEUE_STAMPS_BPF_H
#define TCPACCEPT_QUEUE_STAMPS_BPF_H

#include "maps.bpf.h"
#include "kread.bpf.h"

#define STAMP_WAYS 4

struct queue_stamp {
	__u64 id;  /* child_stamp_id(); 0: free */
	__u64 ns;  /* bpf_ktime_get_ns() when it was queued */
};

struct stamp_set {
	struct queue_stamp way[STAMP_WAYS];
};

/* Sets in queue_stamps (user space sizes the map and sets this to match before load). */
const volatile __u32 stamp_sets = 16384;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct stamp_set);
} queue_stamps SEC(".maps");

#define compiler_barrier() asm volatile("" ::: "memory")

/* The connection's identity: skc_hash (already a hash: it picks the set) and the remote
 * port. Not the local port: a child reset while queued has its own cleared by then. */
static __always_inline __u64 child_stamp_id(struct sock *sk, const bool direct)
{
	__u32 hash = KREAD(direct, sk, __sk_common.skc_hash);
	__u16 dport = KREAD(direct, sk, __sk_common.skc_dport);

	return (__u64)hash << 32 | dport;
}

static __always_inline struct stamp_set *stamp_set_of(__u64 id)
{
	__u32 key = (__u32)(id >> 32) % stamp_sets;

	return bpf_map_lookup_elem(&queue_stamps, &key);
}

static __always_inline void stamp_queued_child(__u64 id, __u64 now)
{
	struct stamp_set *set = stamp_set_of(id);
	struct queue_stamp *slot;

	if (!set)
		return;
	slot = &set->way[0];
#pragma unroll
	for (int i = 0; i < STAMP_WAYS; i++) {
		struct queue_stamp *way = &set->way[i];

		if (way->id == 0 || way->id == id) {
			slot = way;
			break;
		}
		if (way->ns < slot->ns)
			slot = way;
	}
	*(volatile __u64 *)&slot->id = 0;
	compiler_barrier();
	*(volatile __u64 *)&slot->ns = now;
	compiler_barrier();
	*(volatile __u64 *)&slot->id = id;
}

/* The time the child `id` was queued, if its stamp is still there; the slot is freed. */
static __always_inline bool take_queue_stamp(__u64 id, __u64 *queued_ns)
{
	struct stamp_set *set = stamp_set_of(id);

	if (!set)
		return false;
#pragma unroll
	for (int i = 0; i < STAMP_WAYS; i++) {
		struct queue_stamp *way = &set->way[i];

		if (*(volatile __u64 *)&way->id != id)
			continue;
		__u64 ns = *(volatile __u64 *)&way->ns;

		compiler_barrier();
		bool intact = *(volatile __u64 *)&way->id == id;

		*(volatile __u64 *)&way->id = 0;
		if (!intact)
			return false;
		*queued_ns = ns;
		return true;
	}
	return false;
}

#endif
