/* The event record, shared by the BPF program and user space. User space reads this
 * struct's members (names, offsets, sizes), the enum below and TASK_COMM_LEN from the
 * object's BTF at load time and decodes by field name: nothing here is copied by hand in
 * Python. Renaming or resizing a field it needs fails the load with a line naming it. */
#ifndef TCPACCEPT_H
#define TCPACCEPT_H

#define TASK_COMM_LEN 16

/* Which attach method produced the event (user space may print it with --verbose). */
enum accept_probe {
	PROBE_TRACEPOINT = 1,
	PROBE_KPROBE = 2,
	PROBE_FEXIT = 3,
	PROBE_IO_URING = 4, /* io_uring_complete (tracepoint method, bpf/iouring.bpf.h) */
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

/* Key of the remote-address LPM trie: IPv4 ranges are stored as IPv4-mapped IPv6. */
struct remote_key {
	__u32 prefixlen;
	__u8 addr[16];
};

#endif
