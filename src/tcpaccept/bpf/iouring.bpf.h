/* SPDX-License-Identifier: GPL-2.0 */
/* io_uring accepts, for the tracepoint method (fexit and kprobe already see them through
 * inet_csk_accept; user space loads these programs only with the tracepoint method, so an
 * accept is never reported twice).
 *
 *   tp_btf/io_uring_submit_req    remembers (ring, user_data) -> request, accepts only
 *   tp_btf/io_uring_task_add      the same at a request's poll wakeup: requests armed
 *                                 before the tracer started (a server's multishot accept)
 *   tp_btf/io_uring_complete      one CQE; a request or, for the extra CQEs of a multishot
 *                                 accept, NULL (io_fill_cqe_aux): then the remembered one
 *   tp_btf/io_uring_cqe_overflow  a CQE that found the CQ ring full (io_uring_complete does
 *                                 not fire for it), never with a request
 *
 * io_uring_complete fires for every CQE of every ring on the host: its program looks at the
 * opcode first and leaves everything else at once (bench/iouring_tax.py measures the cost).
 * The completing thread may be the ring's owner, an io-wq worker (iou-wrk-N) or the SQPOLL
 * thread (iou-sqp-N): those share the owner's files (CLONE_FILES), so the new fd resolves
 * through current's fd table, and accepting_comm (accepter.bpf.h) names their process.
 * Kernels >= 6.2; io_uring_submit_req (multishot and overflowed CQEs) >= 6.3. */
#ifndef TCPACCEPT_IOURING_BPF_H
#define TCPACCEPT_IOURING_BPF_H

#include <bpf/bpf_tracing.h>
#include "accept.bpf.h"
#include "fds.bpf.h"
#include "kread.bpf.h"

#define IORING_OP_ACCEPT 13
#define IORING_CQE_F_MORE (1U << 1)
#define IORING_FILE_INDEX_ALLOC (~0U)
/* The low bits of a fixed file's file_ptr are flags (FFS_*); struct file is aligned. */
#define FIXED_FILE_FLAGS 7UL

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct io_cqe {
	__u64 user_data;
	__s32 res;
};

struct io_kiocb {
	struct file *file; /* for an accept: the listener */
	__u8 opcode;
	struct io_cqe cqe;
	void *ctx;
};

/* What an accept request carries after the io_kiocb header (io_kiocb_to_cmd). */
struct io_accept {
	struct file *file;
	__u32 file_slot; /* 0: a normal fd; IORING_FILE_INDEX_ALLOC; else direct slot + 1 */
};

struct io_uring_cqe {
	__u64 user_data;
	__s32 res;
	__u32 flags;
};

/* The ring's table of direct descriptors, 6.13 and later ... */
struct io_rsrc_node {
	unsigned long file_ptr;
};

struct io_rsrc_data {
	unsigned int nr;
	struct io_rsrc_node **nodes;
};

struct io_file_table {
	struct io_rsrc_data data;
};

struct io_ring_ctx {
	struct io_file_table file_table;
};

/* ... and before 6.13: an array of tagged file pointers, its size kept in the ring. */
struct io_fixed_file {
	unsigned long file_ptr;
};

struct io_file_table___pre_6_13 {
	struct io_fixed_file *files;
};

struct io_ring_ctx___pre_6_13 {
	struct io_file_table___pre_6_13 file_table;
	unsigned int nr_user_files;
};

#pragma clang attribute pop

struct uring_request {
	__u64 ring; /* struct io_ring_ctx * */
	__u64 user_data;
};

/* (ring, user_data) -> struct io_kiocb * of an accept in flight, for the CQEs that come
 * without their request. LRU: a ring torn down mid-accept cannot fill it for good. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct uring_request);
	__type(value, __u64);
} uring_accepts SEC(".maps");

/* How many entries uring_accepts holds (never less): while 0, a CQE without a request is
 * left without a map lookup, which keeps multishot receives elsewhere cheap. */
__u64 uring_accepts_armed = 0;

static __always_inline struct sock *sock_of_file(struct file *file)
{
	struct socket *socket = file ? BPF_CORE_READ(file, private_data) : NULL;

	return socket ? BPF_CORE_READ(socket, sk) : NULL;
}

/* A direct descriptor: slot in the ring's file table (layout changed in 6.13). */
static __always_inline struct sock *sock_of_slot(void *ring, __u32 slot)
{
	unsigned long file_ptr = 0;

	if (bpf_core_field_exists(struct io_file_table___pre_6_13, files)) {
		struct io_ring_ctx___pre_6_13 *old = ring;
		struct io_fixed_file *files = BPF_CORE_READ(old, file_table.files);

		if (!files || slot >= BPF_CORE_READ(old, nr_user_files))
			return NULL;
		bpf_probe_read_kernel(&file_ptr, sizeof(file_ptr), &files[slot].file_ptr);
	} else {
		struct io_ring_ctx *ctx = ring;
		struct io_rsrc_node **nodes = BPF_CORE_READ(ctx, file_table.data.nodes);
		struct io_rsrc_node *node = NULL;

		if (!nodes || slot >= BPF_CORE_READ(ctx, file_table.data.nr))
			return NULL;
		bpf_probe_read_kernel(&node, sizeof(node), &nodes[slot]);
		if (node)
			file_ptr = BPF_CORE_READ(node, file_ptr);
	}
	return sock_of_file((struct file *)(file_ptr & ~FIXED_FILE_FLAGS));
}

/* Only if it still names this request: another accept in flight may reuse the user_data. */
static __always_inline void forget_request(struct uring_request *key, struct io_kiocb *req)
{
	__u64 *saved = bpf_map_lookup_elem(&uring_accepts, key);

	if (saved && *saved == (__u64)req && !bpf_map_delete_elem(&uring_accepts, key))
		__sync_fetch_and_add(&uring_accepts_armed, -1);
}

/* A CQE of an accept: req is the request, or NULL (multishot, overflow): then found by
 * (ring, user_data). res is the new fd, or the direct slot, or a negative errno. */
static __always_inline int on_accept_cqe(void *ring, struct io_kiocb *req, __u64 user_data,
					 __s32 res, __u32 cflags)
{
	struct uring_request key;

	__builtin_memset(&key, 0, sizeof(key));
	key.ring = (__u64)ring;
	key.user_data = user_data;
	if (!req) {
		__u64 *saved = bpf_map_lookup_elem(&uring_accepts, &key);

		if (!saved)
			return 0;
		req = (void *)*saved;
		/* Requests are recycled: trust the remembered one only if it is still this. */
		if (BPF_CORE_READ(req, opcode) != IORING_OP_ACCEPT ||
		    BPF_CORE_READ(req, ctx) != ring || BPF_CORE_READ(req, cqe.user_data) != user_data)
			return 0;
	}
	if (!(cflags & IORING_CQE_F_MORE)) /* the request's last CQE */
		forget_request(&key, req);
	/* Cancellations (a ring torn down by a kworker) complete with -ECANCELED. */
	if (res < 0 || !task_wanted(bpf_get_current_pid_tgid() >> 32))
		return 0;

	struct sock *listener = sock_of_file(BPF_CORE_READ(req, file));
	__u32 file_slot = BPF_CORE_READ((struct io_accept *)req, file_slot);

	if (file_slot) {
		__u32 slot = file_slot == IORING_FILE_INDEX_ALLOC ? (__u32)res : file_slot - 1;

		return emit_accept(sock_of_slot(ring, slot), listener, -1, -1, PROBE_IO_URING);
	}
	struct task_struct *task = (void *)bpf_get_current_task();

	return emit_accept(sock_of_fd(BPF_CORE_READ(task, files, fdt), res), listener, res, -1,
			   PROBE_IO_URING);
}

/* Every CQE on the host passes here: leave non-accepts with as little work as possible.
 * The tracepoint hands req over as a void *: a read-only cast lets the opcode be one
 * direct load (measured: a probe read instead costs ~23 ns more per CQE here). */
static __always_inline bool maybe_accept(void *req)
{
	if (req) {
		struct io_kiocb *request = bpf_rdonly_cast(req, bpf_core_type_id_kernel(struct io_kiocb));

		return request->opcode == IORING_OP_ACCEPT;
	}
	return uring_accepts_armed != 0;
}

/* Remembers an accept request in flight, for its CQEs that come without it. */
static __always_inline void remember_request(struct io_kiocb *req, struct uring_request *key)
{
	__u64 request = (__u64)req;

	if (!bpf_map_update_elem(&uring_accepts, key, &request, BPF_NOEXIST))
		__sync_fetch_and_add(&uring_accepts_armed, 1);
	else /* the same user_data again: the newer request is the one in flight */
		bpf_map_update_elem(&uring_accepts, key, &request, BPF_EXIST);
}

/* The key a request's CQEs are found by: its ring and user_data. */
static __always_inline void request_key(struct io_kiocb *req, struct uring_request *key)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->ring = (__u64)req->ctx;
	key->user_data = req->cqe.user_data;
}

SEC("tp_btf/io_uring_submit_req")
int BPF_PROG(iouring_submit_req, struct io_kiocb *req)
{
	struct uring_request key;

	if (req->opcode != IORING_OP_ACCEPT)
		return 0;
	request_key(req, &key);
	remember_request(req, &key);
	return 0;
}

/* A request whose poll fired: the accepts it completes next are queued to run (task work).
 * A multishot accept armed before the tracer started was never seen at submission, and its
 * CQEs come without it: this is where it is found, at its first wakeup after the start,
 * before the CQEs of that wakeup. Fires for every poll wakeup of every io_uring request on
 * the host: leave non-accepts at once, and requests already known without a map update. */
SEC("tp_btf/io_uring_task_add")
int BPF_PROG(iouring_task_add, struct io_kiocb *req, int mask)
{
	struct uring_request key;

	if (req->opcode != IORING_OP_ACCEPT)
		return 0;
	request_key(req, &key);

	__u64 *saved = bpf_map_lookup_elem(&uring_accepts, &key);

	if (!saved || *saved != (__u64)req)
		remember_request(req, &key);
	return 0;
}

/* 6.13 and later: io_uring_complete(ctx, req, cqe). */
SEC("tp_btf/io_uring_complete")
int BPF_PROG(iouring_complete, void *ring, void *req, struct io_uring_cqe *cqe)
{
	if (!maybe_accept(req))
		return 0;
	return on_accept_cqe(ring, req, BPF_CORE_READ(cqe, user_data), BPF_CORE_READ(cqe, res),
			     BPF_CORE_READ(cqe, flags));
}

/* 5.19 to 6.12: io_uring_complete(ctx, req, user_data, res, cflags, extra1, extra2). */
SEC("tp_btf/io_uring_complete")
int BPF_PROG(iouring_complete_pre_6_13, void *ring, void *req, __u64 user_data,
	     __s32 res, __u32 cflags)
{
	if (!maybe_accept(req))
		return 0;
	return on_accept_cqe(ring, req, user_data, res, cflags);
}

SEC("tp_btf/io_uring_cqe_overflow")
int BPF_PROG(iouring_cqe_overflow, void *ring, __u64 user_data, __s32 res, __u32 cflags)
{
	if (!uring_accepts_armed)
		return 0;
	return on_accept_cqe(ring, NULL, user_data, res, cflags);
}

#endif
