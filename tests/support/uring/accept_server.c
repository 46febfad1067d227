// SPDX-License-Identifier: GPL-2.0
/* A TCP server that accepts only through io_uring, in one of the ways a real server can:
 *
 *   single        one IORING_OP_ACCEPT at a time, the new fd in the process's fd table
 *   multishot     one multishot accept (CQEs without a request, IORING_CQE_F_MORE)
 *   direct-alloc  into the ring's file table, slot chosen by the kernel (res = the slot)
 *   direct-slot   into the ring's file table, slot chosen here (res = 0)
 *   async         IOSQE_ASYNC: the accept blocks in an io-wq worker (iou-wrk-N)
 *   sqpoll        IORING_SETUP_SQPOLL: the kernel thread iou-sqp-N submits
 *   overflow      all accepts armed at once on a 4-entry CQ ring, reaped only when told:
 *                 most completions land in the CQ overflow list
 *
 * prearmed-MODE (single, multishot, direct-*, async, sqpoll): every accept armed at once
 * before any connection (one multishot request, or N requests), then {"armed": true}: a
 * server that armed before a tracer started.
 *
 * usage: accept_server MODE FAMILY(4|6) HOST COMM N [PORT]   (PORT 0 or none: any)
 * stdout, one JSON object a line: {"port", "pid", "listen_fd"} once listening; in overflow
 * mode {"armed": true} once every accept is in flight (then it waits for "reap" on stdin);
 * then {"accepted", "fds", "overflowed"} after N successful accepts. It keeps the
 * connections and the ring until stdin closes or says "quit", so teardown (which cancels a
 * pending multishot accept) happens while a test may still be tracing. Failures print
 * {"error": ...} (or {"unsupported": ...} when the kernel refuses the operation) and exit 1.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_ACCEPTS 4096
#define OVERFLOW_RING_ENTRIES 4
#define RING_ENTRIES 64
#define PREARMED_MAX RING_ENTRIES /* N requests in flight at once: the SQ ring's size */

static int accepted_res[MAX_ACCEPTS];
static int accepted;

static void fail(const char *what, int err)
{
	/* EINVAL from an opcode or flag the kernel does not know: report it apart, so a test
	 * can tell "this kernel has no multishot accept" from a broken server. */
	printf("{\"%s\": \"%s: %s\"}\n", err == EINVAL ? "unsupported" : "error", what,
	       strerror(err));
	exit(1);
}

static int listen_on(int family, const char *host, int port, int backlog)
{
	struct sockaddr_storage addr = {0};
	socklen_t len;
	int one = 1, fd = socket(family == 6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		fail("socket", errno);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (family == 6) {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;

		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
		if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
			fail("bad IPv6 address", EINVAL);
		len = sizeof(*a6);
	} else {
		struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;

		a4->sin_family = AF_INET;
		a4->sin_port = htons(port);
		if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
			fail("bad IPv4 address", EINVAL);
		len = sizeof(*a4);
	}
	if (bind(fd, (struct sockaddr *)&addr, len) || listen(fd, backlog))
		fail("bind/listen", errno);
	return fd;
}

static int local_port(int fd)
{
	struct sockaddr_storage addr;
	socklen_t len = sizeof(addr);

	getsockname(fd, (struct sockaddr *)&addr, &len);
	return ntohs(addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
						: ((struct sockaddr_in *)&addr)->sin_port);
}

static struct io_uring_sqe *next_sqe(struct io_uring *ring)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);

	if (!sqe)
		fail("no free SQE", EBUSY);
	return sqe;
}

/* Records one CQE; returns whether the request is still armed (multishot with F_MORE). */
static int take(struct io_uring *ring, struct io_uring_cqe *cqe)
{
	int res = cqe->res, more = cqe->flags & IORING_CQE_F_MORE;

	io_uring_cqe_seen(ring, cqe);
	if (res < 0)
		fail("accept completion", -res);
	accepted_res[accepted++] = res;
	return more;
}

static struct io_uring_cqe *wait_one(struct io_uring *ring)
{
	struct io_uring_cqe *cqe;
	int err = io_uring_wait_cqe(ring, &cqe);

	if (err)
		fail("io_uring_wait_cqe", -err);
	return cqe;
}

static void submit(struct io_uring *ring)
{
	int err = io_uring_submit(ring);

	if (err < 0)
		fail("io_uring_submit", -err);
}

static void announce_armed(void)
{
	printf("{\"armed\": true}\n");
	fflush(stdout);
}

/* One accept after another; with `prearmed`, all N submitted at once first. */
static void one_at_a_time(struct io_uring *ring, int listen_fd, const char *mode, int n,
			  int prearmed)
{
	for (int i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = next_sqe(ring);

		if (!strcmp(mode, "direct-alloc"))
			/* liburing 2.3 stores file_index + 1: this asks for IORING_FILE_INDEX_ALLOC. */
			io_uring_prep_accept_direct(sqe, listen_fd, NULL, NULL, 0,
						    IORING_FILE_INDEX_ALLOC - 1);
		else if (!strcmp(mode, "direct-slot"))
			io_uring_prep_accept_direct(sqe, listen_fd, NULL, NULL, 0, i);
		else
			io_uring_prep_accept(sqe, listen_fd, NULL, NULL, 0);
		if (!strcmp(mode, "async"))
			io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
		sqe->user_data = 1000 + i;
		if (prearmed)
			continue;
		submit(ring);
		take(ring, wait_one(ring));
	}
	if (!prearmed)
		return;
	submit(ring);
	announce_armed();
	while (accepted < n)
		take(ring, wait_one(ring));
}

static void multishot(struct io_uring *ring, int listen_fd, int n, int prearmed)
{
	int armed = 0;

	while (accepted < n) {
		if (!armed) {
			struct io_uring_sqe *sqe = next_sqe(ring);

			io_uring_prep_multishot_accept(sqe, listen_fd, NULL, NULL, 0);
			sqe->user_data = 7;
			submit(ring);
			if (prearmed && !accepted)
				announce_armed();
		}
		armed = take(ring, wait_one(ring));
	}
}

static int overflow(struct io_uring *ring, int listen_fd, int n)
{
	char line[64];
	int overflowed;

	for (int i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(ring);

		if (!sqe) { /* the SQ ring is as small as the CQ ring: hand these over first */
			submit(ring);
			sqe = next_sqe(ring);
		}
		io_uring_prep_accept(sqe, listen_fd, NULL, NULL, 0);
		sqe->user_data = 2000 + i;
	}
	submit(ring);
	announce_armed();
	if (!fgets(line, sizeof(line), stdin) || strncmp(line, "reap", 4))
		fail("expected reap on stdin", EPROTO);
	/* Set by the kernel while completions wait in its overflow list (IORING_FEAT_NODROP). */
	overflowed = !!(IO_URING_READ_ONCE(*ring->sq.kflags) & IORING_SQ_CQ_OVERFLOW);
	while (accepted < n)
		take(ring, wait_one(ring));
	return overflowed;
}

int main(int argc, char **argv)
{
	struct io_uring_params params = {0};
	struct io_uring ring;
	char line[64];
	int listen_fd, n, err, overflowed = 0;
	const char *mode;
	int prearmed;

	if (argc != 6 && argc != 7) {
		fprintf(stderr, "usage: %s MODE FAMILY HOST COMM N [PORT]\n", argv[0]);
		return 2;
	}
	mode = argv[1];
	prearmed = !strncmp(mode, "prearmed-", 9);
	if (prearmed)
		mode += 9;
	n = atoi(argv[5]);
	if (n < 1 || n > MAX_ACCEPTS || (prearmed && n > PREARMED_MAX))
		fail("N out of range", ERANGE);
	prctl(PR_SET_NAME, argv[4], 0, 0, 0);
	listen_fd = listen_on(atoi(argv[2]), argv[3], argc == 7 ? atoi(argv[6]) : 0, n + 16);

	if (!strcmp(mode, "sqpoll")) {
		params.flags = IORING_SETUP_SQPOLL;
		params.sq_thread_idle = 2000;
	}
	if (!strcmp(mode, "overflow")) {
		params.flags = IORING_SETUP_CQSIZE;
		params.cq_entries = OVERFLOW_RING_ENTRIES;
	}
	err = io_uring_queue_init_params(!strcmp(mode, "overflow") ? OVERFLOW_RING_ENTRIES
								    : RING_ENTRIES,
					 &ring, &params);
	if (err)
		fail("io_uring_queue_init_params", -err);
	if (!strncmp(mode, "direct-", 7)) {
		err = io_uring_register_files_sparse(&ring, n);
		if (err)
			fail("io_uring_register_files_sparse", -err);
	}
	printf("{\"port\": %d, \"pid\": %d, \"listen_fd\": %d}\n", local_port(listen_fd), getpid(),
	       listen_fd);
	fflush(stdout);

	if (!strcmp(mode, "multishot"))
		multishot(&ring, listen_fd, n, prearmed);
	else if (!strcmp(mode, "overflow") && !prearmed)
		overflowed = overflow(&ring, listen_fd, n);
	else if (!strcmp(mode, "single") || !strcmp(mode, "async") || !strcmp(mode, "sqpoll") ||
		 !strncmp(mode, "direct-", 7))
		one_at_a_time(&ring, listen_fd, mode, n, prearmed);
	else
		fail("unknown mode", EINVAL);

	printf("{\"accepted\": %d, \"overflowed\": %s, \"fds\": [", accepted,
	       overflowed ? "true" : "false");
	for (int i = 0; i < accepted; i++)
		printf("%s%d", i ? ", " : "", accepted_res[i]);
	printf("]}\n");
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin) && strncmp(line, "quit", 4))
		;
	io_uring_queue_exit(&ring);
	return 0;
}
