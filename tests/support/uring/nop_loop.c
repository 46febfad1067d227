// SPDX-License-Identifier: GPL-2.0
/* The io_uring tax benchmark's load: N IORING_OP_NOP requests in batches of BATCH, each
 * batch submitted and reaped with one io_uring_enter, as an io_uring-heavy server would.
 * Every NOP fires io_uring_submit_req and io_uring_complete, the two tracepoints tcpaccept
 * hooks, and is not an accept: exactly the cost a tracer imposes on unrelated work.
 *
 * usage: nop_loop N        prints {"nops": N, "ns_per_nop": X, "cpu_ns_per_nop": Y}
 * ns_per_nop is wall time (CLOCK_MONOTONIC); cpu_ns_per_nop is the process's CPU time
 * (user + system, where the tracepoints run), which other load on the machine does not
 * inflate.
 */
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BATCH 32

static double now_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	struct io_uring ring;
	long n = argc == 2 ? atol(argv[1]) : 0, done = 0;
	double start, cpu_start;
	int err;

	if (n < BATCH) {
		fprintf(stderr, "usage: %s N (N >= %d)\n", argv[0], BATCH);
		return 2;
	}
	err = io_uring_queue_init(BATCH, &ring, 0);
	if (err) {
		fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-err));
		return 1;
	}
	start = now_ns(CLOCK_MONOTONIC);
	cpu_start = now_ns(CLOCK_PROCESS_CPUTIME_ID);
	while (done < n) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;

		for (int i = 0; i < BATCH; i++)
			io_uring_prep_nop(io_uring_get_sqe(&ring));
		err = io_uring_submit_and_wait(&ring, BATCH);
		if (err < 0) {
			fprintf(stderr, "io_uring_submit_and_wait: %s\n", strerror(-err));
			return 1;
		}
		io_uring_for_each_cqe(&ring, head, cqe)
			seen++;
		io_uring_cq_advance(&ring, seen);
		done += seen;
	}
	printf("{\"nops\": %ld, \"ns_per_nop\": %.1f, \"cpu_ns_per_nop\": %.1f}\n", done,
	       (now_ns(CLOCK_MONOTONIC) - start) / done,
	       (now_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu_start) / done);
	io_uring_queue_exit(&ring);
	return 0;
}
