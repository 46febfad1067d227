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

/* Filters, written by user space into .rodata before load (the verifier then prunes the
 * branches of filters that are off). The program's only .rodata variable is one of these. */
enum filter_flag {
	FILTER_PID = 1 << 0,       /* pid_filter map */
	FILTER_LPORT = 1 << 1,     /* lport_filter map */
	FILTER_UID = 1 << 2,       /* config.uid */
	FILTER_COMM = 1 << 3,      /* config.comm */
	FILTER_NETNS = 1 << 4,     /* config.netns */
	FILTER_CGROUP = 1 << 5,    /* cgroup_filter: a cgroup v2 directory, descendants included */
	FILTER_CGROUPMAP = 1 << 6, /* bcc --cgroupmap: pinned hash of cgroup ids */
	FILTER_MNTNSMAP = 1 << 7,  /* bcc --mntnsmap: pinned hash of mount namespace inodes */
	FILTER_REMOTE = 1 << 8,    /* remote_filter LPM trie */
	FILTER_FAMILY = 1 << 9,    /* config.family (4 or 6; IPv4-mapped IPv6 counts as 4) */
	SAVED_REGS = 1 << 10,      /* read the listening fd from the task's saved user registers */
	QUEUE_LATENCY = 1 << 11,   /* stamp_established runs: look the child's stamp up */
};

struct tcpaccept_config {
	__u32 flags;     /* enum filter_flag */
	__u32 uid;
	__u32 netns;
	__u32 family;
	char comm[TASK_COMM_LEN];
	__u32 wakeup_batch; /* wake the reader after this many events per CPU */
};

/* Key of the remote-address LPM trie: IPv4 ranges are stored as IPv4-mapped IPv6. */
struct remote_key {
	__u32 prefixlen;
	__u8 addr[16];
};

#endif
