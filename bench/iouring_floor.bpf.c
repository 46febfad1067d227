// SPDX-License-Identifier: GPL-2.0
/* The floor for bench/iouring_tax.py: programs on the same two tracepoints as tcpaccept's
 * io_uring hooks that do nothing (submit) or only what every CQE needs (one direct load of
 * the opcode). What they cost is the kernel's tracepoint -> BPF dispatch, which no program
 * body can avoid; tcpaccept's tax minus this floor is what its own code adds. */
#include "../src/tcpaccept/bpf/kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

struct io_kiocb {
	__u8 opcode;
} __attribute__((preserve_access_index));

extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id__k) __ksym __weak;

SEC("tp_btf/io_uring_submit_req")
int BPF_PROG(floor_submit_req, struct io_kiocb *req)
{
	return 0;
}

SEC("tp_btf/io_uring_complete")
int BPF_PROG(floor_complete, void *ring, void *req)
{
	struct io_kiocb *request = bpf_rdonly_cast(req, bpf_core_type_id_kernel(struct io_kiocb));

	return req && request->opcode == 13;
}
