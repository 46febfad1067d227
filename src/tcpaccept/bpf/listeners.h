/* The listener record: one per (task, fd) holding a TCP socket in LISTEN state, written by
 * listeners.bpf.c into the iterator's seq_file and read by tcpaccept/listeners/ by name
 * through this object's BTF (no layout is copied into Python). A record with sock_inode 0 is
 * a tick (see TICK_FILES), not a listener. */
#ifndef TCPACCEPT_LISTENERS_H
#define TCPACCEPT_LISTENERS_H

#define LISTENER_COMM_LEN 16
/* The size of each read() of the iterator: see TICK_FILES in listeners.bpf.c. */
#define LISTENER_READ_BYTES 4096

struct listener_record {
	__u64 sock_inode;  /* sockfs inode: the socket's identity, as sock_diag and /proc show it */
	__u32 netns;       /* network namespace inode */
	__u32 pid;         /* owner's process id, in the reader's pid namespace */
	__u32 backlog;     /* sk_ack_backlog: connections waiting for accept() */
	__u32 backlog_max; /* sk_max_ack_backlog: the listen() backlog after somaxconn */
	__u32 syn_queue;   /* icsk_accept_queue.qlen: handshakes not yet completed */
	__u32 drops;       /* sk_drops (or its NUMA split on 6.18+): wrapping counter */
	__u16 family;      /* AF_INET or AF_INET6 */
	__u16 lport;       /* host byte order */
	__u8 laddr[16];    /* IPv4 in the first 4 bytes */
	char comm[LISTENER_COMM_LEN];
};

#endif
