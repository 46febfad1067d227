/* A hand-kept subset of the kernel's types, only the fields tcpaccept reads.
 * Every struct carries preserve_access_index, so clang emits CO-RE relocations and libbpf
 * fixes field offsets against the running kernel's BTF at load time: the layouts below
 * need not match any kernel, only the field names and types must.
 * Defining __VMLINUX_H__ makes bpf_tracing.h use the kernel's pt_regs field names. */
#ifndef TCPACCEPT_KERNEL_TYPES_H
#define TCPACCEPT_KERNEL_TYPES_H
#define __VMLINUX_H__

/* Fixed-width types and the BPF UAPI (map types, helper ids) come from the stable UAPI. */
#include <linux/types.h>
#include <linux/bpf.h>

typedef _Bool bool;
enum { false = 0, true = 1 };

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_MPTCP 262
#define TCP_ESTABLISHED 1
#define TCP_SYN_RECV 3
#define PF_IO_WORKER 0x00000010 /* io_uring's io-wq and SQPOLL threads */

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

/* struct pt_regs differs per architecture: arch.bpf.h, included at the end. */

typedef struct {
	int counter;
} atomic_t;

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
};

struct sock_common {
	/* In an anonymous union with skc_u16hashes in the kernel: CO-RE finds it there. */
	unsigned int skc_hash;
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct sock {
	struct sock_common __sk_common;
	atomic_t sk_drops; /* listeners.bpf.c; 6.18+ may count in sk_drop_counters instead */
	/* A u16 since 5.6, an 8-bit bitfield before: read it with BPF_CORE_READ_BITFIELD_PROBED. */
	__u16 sk_protocol;
	__u16 sk_type;
	__u32 sk_ack_backlog;
	__u32 sk_max_ack_backlog;
};

struct socket {
	short type;
	struct sock *sk;
};

/* An MPTCP socket (listener or accepted): its first subflow is a plain TCP sock. */
struct mptcp_sock {
	struct sock *first;
};

struct inode;

struct file {
	struct inode *f_inode; /* listeners.bpf.c */
	void *private_data;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct mnt_namespace {
	struct ns_common ns;
};

struct nsproxy {
	struct mnt_namespace *mnt_ns;
};

typedef struct {
	__u32 val;
} kuid_t;

struct cred {
	kuid_t uid;
};

struct kernfs_node {
	__u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct css_set {
	struct cgroup *dfl_cgrp;
};

/* PID namespaces: a task's struct pid holds its number in each namespace from the initial
 * one (level 0) down to its own (numbers[level]). */
struct pid_namespace {
	struct pid_namespace *parent;
	unsigned int level;
	struct ns_common ns;
};

/* Indexed as an array (listeners.bpf.c): its size must be the kernel's (int + pointer,
 * stable since 2.6.24). */
struct upid {
	int nr;
	struct pid_namespace *ns;
};

struct pid {
	unsigned int level;
	struct upid numbers[1];
};

struct task_struct {
	void *stack;
	unsigned int flags; /* PF_* */
	int pid;
	int tgid;
	struct task_struct *group_leader;
	char comm[16];
	const struct cred *cred;
	struct css_set *cgroups;
	struct files_struct *files;
	struct nsproxy *nsproxy;
	struct pid *thread_pid;
};

/* The second argument of inet_csk_accept since 6.10 (only passed through here). */
struct proto_accept_arg {
	int flags;
	int err;
	int is_empty;
	bool kern;
};

#pragma clang attribute pop

/* Context of the syscalls:sys_{enter,exit}_accept{,4} tracepoints (layout from their
 * tracefs format files, stable ABI): 8 bytes of common fields, then the syscall number. */
struct syscall_enter_ctx {
	__u64 common;
	int syscall_nr;
	unsigned long args[6];
};

struct syscall_exit_ctx {
	__u64 common;
	int syscall_nr;
	long ret;
};

#include "arch.bpf.h"

#endif
