/* SPDX-License-Identifier: GPL-2.0 */
/* From an fd of the current task to its socket's sock, for the programs that see accept()
 * as a syscall (tcpaccept.bpf.c, sys_exit.bpf.h) or io_uring's completions (iouring.bpf.h),
 * which know fds, not sockets. */
#ifndef TCPACCEPT_FDS_BPF_H
#define TCPACCEPT_FDS_BPF_H

#include "kread.bpf.h"

/* fd -> file -> socket -> sock in the task's fd table. Both fds were just handed to or
 * used by a successful accept(), so both are sockets: no inode type check is needed (each
 * extra read is paid on every accept), and build_accept checks family and protocol. */
static __always_inline struct sock *sock_of_fd(struct fdtable *fdt, __s32 fd)
{
	struct file **fds, *file;
	struct socket *socket;

	if (!fdt || fd < 0 || (__u32)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	socket = BPF_CORE_READ(file, private_data);
	return socket ? BPF_CORE_READ(socket, sk) : NULL;
}

/* As sock_of_fd, with direct loads (6.2+): one probe read for the variable fd index (BTF
 * cannot type an array of pointers), bpf_rdonly_cast to retype the file and its socket. */
static __always_inline struct sock *sock_of_fd_btf(struct fdtable *fdt, __s32 fd)
{
	struct file *file;
	struct socket *socket;

	if (fd < 0 || (__u32)fd >= fdt->max_fds)
		return NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fdt->fd[fd]) || !file)
		return NULL;
	file = bpf_rdonly_cast(file, bpf_core_type_id_kernel(struct file));
	socket = file->private_data; /* an accept()ed or accepting fd: a socket */
	if (!socket)
		return NULL;
	socket = bpf_rdonly_cast(socket, bpf_core_type_id_kernel(struct socket));
	return socket->sk;
}

#endif
