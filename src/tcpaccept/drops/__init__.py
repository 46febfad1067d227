"""Per-listener accept-queue overflow (drop) monitoring, as model.Drop rows.

Two sources of the same counter: table_monitor.py reads the kernel's listener table
(tcpaccept/listeners: a task_file BPF iterator, every network namespace and the owners with
CAP_BPF + CAP_PERFMON), the default; monitor.py samples NETLINK_SOCK_DIAG, the fallback where
the kernel has no usable iterator, described below.

When a listener's accept queue is full the kernel throws the handshake away and counts it
system-wide in /proc/net/netstat (TcpExt ListenOverflows / ListenDrops). Those counters do not
say *which* listener overflowed, so this package samples every TCP listener through
inet_diag (one NETLINK_SOCK_DIAG dump per address family and network namespace per poll) and
reads the listener's own drop counter, ``sk->sk_drops``, exported as ``SK_MEMINFO_DROPS`` in
the ``INET_DIAG_SKMEMINFO`` attribute.

What the per-listener counter means. ``tcp_listendrop()`` does ``sk_drops += 1`` and
``ListenDrops += 1``; on top of that, a segment that tcp_v4_rcv/tcp_v6_rcv hands to a
not-yet-accepted connection (request socket) and that is not consumed is freed through
``discard_and_relse``, which adds it to the *listener's* sk_drops again. Measured on 6.18.44
(tests/kernel/test_drops.py checks the first row), per event:

  event                                          sk_drops  ListenOverflows  ListenDrops
  SYN meets a full accept queue                      1            1              1
    (any tcp_syncookies: the accept-queue check comes after the cookie decision)
  ACK/data completing a handshake meets a full
    accept queue (tcp_abort_on_overflow=0)           2            1              1
  SYN meets a full SYN queue, tcp_syncookies=0       1            0              1
    (with tcp_syncookies=1 the kernel answers with a cookie instead: no drop)
  bare ACK held back by TCP_DEFER_ACCEPT             1            0              0
  RST for a not-yet-accepted connection              1            0              0

(from the source, not measured: segments a listener drops for a socket filter, min TTL,
MD5/AO or XFRM policy also land in sk_drops only.)

"Full" means more than the listen() backlog are queued: backlog 1 holds 2 connections.
So for the common overload (connects arriving faster than accept() drains them, each SYN
refused and retransmitted by the client after 1 s, 3 s, 7 s, ...) ``Drop.dropped``
equals the ListenOverflows and ListenDrops deltas: refused connection attempts, retries
included. It over-counts (relative to ListenOverflows) when handshakes complete into a full
queue, and listeners using TCP_DEFER_ACCEPT (nginx ``listen ... deferred``) show drops for
every held-back ACK even when nothing overflows.

The monitor samples every network namespace of the machine, each through a sock_diag socket
created inside it, and maps sockets to processes through the /proc of the caller's pid
namespace (run in the host's pid namespace to see every owner).

Layout: abi.py (the netlink/inet_diag request and its decoding, no I/O), diag_socket.py (one
socket, one dump), namespaces.py (finding namespaces, opening a socket inside one),
owners.py (socket inode -> pid/comm), monitor.py (baselines, deltas, model.Drop);
table_monitor.py (model.Drop from the listener table).
"""

from __future__ import annotations

from ..model import Drop
from .abi import (
    DropMonitorError,
    ListenerSample,
    build_dump_request,
    decode_diag_msg,
    decode_messages,
    port_filter_bytecode,
)
from .monitor import ListenerDropMonitor

DropReport = Drop  # the name before model.Drop; kept while callers move over

__all__ = [
    "DropMonitorError",
    "DropReport",
    "ListenerDropMonitor",
    "ListenerSample",
    "build_dump_request",
    "decode_diag_msg",
    "decode_messages",
    "port_filter_bytecode",
]
