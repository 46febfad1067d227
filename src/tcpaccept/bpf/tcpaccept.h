/* The event record, shared by the BPF program and user space (mirrored in event.py).
 * Fixed-size, naturally aligned, no implicit padding: Python decodes it with one struct.Struct. */
#ifndef TCPACCEPT_H
#define TCPACCEPT_H

#define TASK_COMM_LEN 16

/* Which attach method produced the event (user space may print it with --verbose). */
enum accept_probe {
	PROBE_TRACEPOINT = 1,
	PROBE_KPROBE = 2,
	PROBE_FEXIT = 3,
};

struct accept_event {
	__u64 ts_ns;            /* bpf_ktime_get_ns() at accept return (CLOCK_MONOTONIC) */
	__u64 cgroup_id;        /* cgroup v2 id of the accepting task */
	__u64 queue_latency_ns; /* established -> accepted; 0 when not measured */
	__u32 pid;              /* tgid */
	__u32 tid;
	__u32 uid;
	__u32 netns;            /* network namespace inode number */
	__s32 fd;               /* new fd; -1 when the probe cannot know it (fexit/kprobe) */
	__s32 listen_fd;        /* listening fd; -1 when unknown */
	__u32 backlog;          /* listener's sk_ack_backlog at accept return */
	__u32 backlog_max;      /* listener's sk_max_ack_backlog */
	__u16 family;           /* AF_INET or AF_INET6 */
	__u16 lport;            /* host order */
	__u16 rport;            /* host order */
	__u8 probe;             /* enum accept_probe */
	__u8 pad;
	__u8 laddr[16];         /* IPv4 in the first 4 bytes */
	__u8 raddr[16];
	char comm[TASK_COMM_LEN];
};

#endif
