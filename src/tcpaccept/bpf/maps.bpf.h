/* SPDX-License-Identifier: GPL-2.0 */
/* tcpaccept's load-time settings (.rodata, set by name from user space) and the maps of
 * the record path and the filters (aggregate.bpf.h and iouring.bpf.h hold their own). */
#ifndef TCPACCEPT_MAPS_BPF_H
#define TCPACCEPT_MAPS_BPF_H

#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include "tcpaccept.h"

/* Load-time settings: user space sets each by name in .rodata (through the object's BTF)
 * before load, so the verifier prunes the branches of filters that are off. */
const volatile bool filter_pid = false;      /* pid_filter map */
const volatile bool filter_lport = false;    /* lport_filter map */
const volatile bool filter_uid = false;
const volatile __u32 target_uid = 0;
const volatile bool filter_comm = false;
const volatile char target_comm[TASK_COMM_LEN] = {};
const volatile bool filter_netns = false;
const volatile __u32 target_netns = 0;       /* network namespace inode */
const volatile bool filter_cgroup = false;   /* cgroup_filter: a cgroup v2 dir and below */
const volatile bool filter_cgroupmap = false; /* bcc --cgroupmap: pinned hash of cgroup ids */
const volatile bool filter_mntnsmap = false; /* bcc --mntnsmap: pinned hash of mntns inodes */
const volatile bool filter_containers = false; /* container_cgroups: --container/--pod/... */
const volatile bool filter_remote = false;   /* remote_filter LPM trie */
const volatile bool filter_family = false;
const volatile __u32 target_family = 0;      /* 4 or 6; IPv4-mapped IPv6 counts as 4 */
/* Modes, not filters. */
const volatile bool saved_regs = false;      /* listening fd from the saved user registers */
const volatile bool queue_latency = false;   /* a stamp program runs: look stamps up */
const volatile __u32 wakeup_batch = 1;       /* wake the reader after this many per CPU */
const volatile bool aggregate = false;       /* count in the maps of aggregate.bpf.h */
const volatile bool emit_records = true;     /* a ring-buffer record per accept (lines) */
/* A tracer whose /proc shows a PID namespace other than the initial one reports and filters
 * PIDs as that namespace numbers them (the nsfs device and inode of /proc/1/ns/pid). */
const volatile bool in_pid_namespace = false;
const volatile __u64 pidns_dev = 0;
const volatile __u64 pidns_ino = 0;

/* Never read: they put the record's types into the object's BTF, where user space reads
 * the record layout (types used only inside inlined code are not emitted). */
const struct accept_event *const accept_event_btf = 0;
const enum accept_probe accept_probe_btf = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* user space may resize before load */
} events SEC(".maps");

/* Ring buffer reservations that failed: user space reports them, nothing is lost silently. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost_events SEC(".maps");

/* Accepts by processes that the tracer's PID namespace cannot see (they have no PID
 * there, so they are not shown): user space says how many at exit. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} outside_pid_namespace SEC(".maps");

/* Events submitted on this CPU since it last woke the reader. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} events_since_wakeup SEC(".maps");

/* tid -> listening sock, between kprobe and kretprobe (kprobe method only). LRU: a call
 * whose kretprobe the kernel skipped (maxactive exhausted) leaves its entry behind, and
 * with threads coming and going a plain hash would fill up and refuse every new thread. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, __u64);
} accepting_sock SEC(".maps");

/* tid -> listening fd, between sys_enter and sys_exit (tracepoint method, kernels < 5.15
 * only: newer kernels read it from the saved user registers, which also covers accepts that
 * were already blocked when tracing started). LRU: a thread killed inside accept() never
 * reaches sys_exit, and its entry would stay for good. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, __s32);
} accepting_fd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} pid_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} lport_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct remote_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} remote_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} cgroup_filter SEC(".maps");

/* bcc's pinned filter maps (--cgroupmap, --mntnsmap): user space swaps in the pinned fd. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u64);
} cgroupmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u32);
} mntnsmap SEC(".maps");

/* cgroup ids of the containers that --container/--pod/--k8s-namespace select, descendants
 * included; user space re-resolves every second, so containers started later are matched. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u8);
} container_cgroups SEC(".maps");

#endif
