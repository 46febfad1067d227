"""Per-listener accept-queue overflow (drop) monitoring through NETLINK_SOCK_DIAG.

When a listener's accept queue is full the kernel throws the handshake away and counts it
system-wide in /proc/net/netstat (TcpExt ListenOverflows / ListenDrops). Those counters do not
say *which* listener overflowed, so this module samples every TCP listener through inet_diag
(one NETLINK_SOCK_DIAG dump per address family per poll) and reads the listener's own drop
counter, ``sk->sk_drops``, exported as ``SK_MEMINFO_DROPS`` in the ``INET_DIAG_SKMEMINFO``
attribute.

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
refused and retransmitted by the client after 1 s, 3 s, 7 s, ...) ``DropReport.dropped``
equals the ListenOverflows and ListenDrops deltas: refused connection attempts, retries
included. It over-counts (relative to ListenOverflows) when handshakes complete into a full
queue, and listeners using TCP_DEFER_ACCEPT (nginx ``listen ... deferred``) show drops for
every held-back ACK even when nothing overflows.

The monitor sees the listeners of the network namespace of the process that calls it (the
netlink socket is opened in the caller's netns), and maps sockets to processes through the
/proc of the caller's pid namespace.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

__all__ = [
    "DropMonitorError",
    "DropReport",
    "ListenerDropMonitor",
    "ListenerKey",
    "ListenerSample",
    "build_dump_request",
    "decode_messages",
    "port_filter_bytecode",
    "read_listen_overflows",
]

# --- netlink / inet_diag ABI (include/uapi/linux/{netlink,sock_diag,inet_diag}.h) ---
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
TCP_LISTEN = 10
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_SKMEMINFO = 7
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_S_GE = 2
INET_DIAG_BC_S_LE = 3
SK_MEMINFO_DROPS = 8

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid.
_REQ = struct.Struct("=BBBxI")
# inet_diag_sockid: sport, dport (network order), src[16], dst[16], if, cookie[2] (host order).
_SOCKID_PORTS = struct.Struct("!HH")
_SOCKID_REST = struct.Struct("=16s16sI8s")
# struct inet_diag_msg (72 bytes). Only the fields we use are decoded ("x" skips).
_DIAG_MSG = struct.Struct(
    "=B3x"  # idiag_family; state, timer, retrans
    "H2x16s16x4xII"  # id: sport (network order), dport, src, dst, if, cookie[2]
    "4xII4xI"  # expires; rqueue, wqueue; uid; inode
)
_RTATTR = struct.Struct("=HH")  # rta_len, rta_type
_ERRNO = struct.Struct("=i")
_U32 = struct.Struct("=I")
_BC_OP = struct.Struct("=BBH")  # inet_diag_bc_op: code, yes, no
_NLA_HDR_LEN = 4
_SKMEMINFO_MIN_LEN = 4 + (SK_MEMINFO_DROPS + 1) * 4  # rtattr header + u32 values up to DROPS
_SKMEMINFO_AT: dict[int, int] = {}  # attribute-block length -> offset of SKMEMINFO in it
_RECV_BUF = 32768  # the kernel caps one dump skb at 32 KiB anyway
_DUMP_TIMEOUT_S = 5.0  # a dump of thousands of listeners takes milliseconds
# Jump offsets in inet_diag bytecode are 16-bit; 20 bytes per port range keeps 2048 ranges
# well inside that. Beyond it the port filter runs in user space only.
_BC_MAX_RANGES = 2048

# Cookies of listeners that vanished from a dump, kept so a listener that shows up again (it
# was skipped by a dump racing with bind/close, or it stopped and resumed listening) resumes
# from its old counter instead of having its whole history reported again.
_TOMBSTONES_MAX = 65536
# How long an inode no process is found to own stays unresolved before /proc is rescanned.
_OWNER_MISS_RETRY_S = 5.0


class DropMonitorError(Exception):
    """Sampling listeners failed; the message is one line."""


@dataclass(frozen=True)
class ListenerKey:
    family: int
    laddr: str  # printable IP, IPv6 compressed
    lport: int


@dataclass(frozen=True)
class DropReport:
    laddr: str
    lport: int
    family: int
    pid: int | None
    comm: str | None
    backlog: int  # accept queue length when sampled
    backlog_max: int  # listen() backlog as clamped by the kernel (somaxconn)
    dropped: int  # drops since the previous report for this listener
    inode: int

    @property
    def key(self) -> ListenerKey:
        return ListenerKey(self.family, self.laddr, self.lport)


class ListenerSample(NamedTuple):
    """One listener as decoded from one inet_diag_msg (a tuple: built 1000s of times a poll)."""

    family: int
    laddr: str
    lport: int
    inode: int
    cookie: int  # unique per socket for the whole boot, unlike (laddr, lport) or the inode
    backlog: int  # idiag_rqueue: sk_ack_backlog for a listener
    backlog_max: int  # idiag_wqueue: sk_max_ack_backlog for a listener
    drops: int  # SK_MEMINFO_DROPS (u32, wraps)


# --- request building ---


def port_filter_bytecode(ports: Iterable[int]) -> bytes:
    """inet_diag bytecode accepting sockets whose local port is in ``ports``.

    Only S_GE/S_LE/JMP are used (present since 2.6), one range per run of consecutive
    ports: ``sport >= lo && sport <= hi`` then jump to the end (accept); a failed comparison
    falls through to the next range, and past the last range means reject. The kernel
    auditor walks the program along the "yes" edges, so every "yes" is the next op.
    """
    ranges = _port_ranges(ports)
    if not ranges:
        raise DropMonitorError("port filter is empty")
    if len(ranges) > _BC_MAX_RANGES:
        raise DropMonitorError(f"port filter has more than {_BC_MAX_RANGES} port ranges")
    sizes = [20] * (len(ranges) - 1) + [16]  # the last range needs no jump to the end
    code = []
    for i, (lo, hi) in enumerate(ranges):
        to_end = sum(sizes[i:])  # from this block's first op to the end of the program
        # A failed comparison goes to the next block or, after the last one, 4 bytes past
        # the end of the program, which the interpreter takes as "reject".
        miss = sizes[i] if i < len(ranges) - 1 else sizes[i] + 4
        code.append(_BC_OP.pack(INET_DIAG_BC_S_GE, 8, miss) + _BC_OP.pack(0, 0, lo))
        code.append(_BC_OP.pack(INET_DIAG_BC_S_LE, 8, miss - 8) + _BC_OP.pack(0, 0, hi))
        if i < len(ranges) - 1:
            # lo <= sport <= hi: jump exactly to the end of the program, which is "accept".
            code.append(_BC_OP.pack(INET_DIAG_BC_JMP, 4, to_end - 16))
    return b"".join(code)


def _port_ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if not 0 < port < 65536:
            raise DropMonitorError(f"invalid port {port}")
        if ranges and ranges[-1][1] == port - 1:
            ranges[-1] = (ranges[-1][0], port)
        else:
            ranges.append((port, port))
    return ranges


def build_dump_request(family: int, seq: int, ports: frozenset[int] | None = None) -> bytes:
    """SOCK_DIAG_BY_FAMILY dump request for TCP listeners of ``family`` with SKMEMINFO.

    With ``ports`` the kernel filters too (the caller must still filter: past
    _BC_MAX_RANGES port ranges no filter is sent).
    """
    return _frame(_request_body(family, ports), seq)


def _frame(body: bytes, seq: int) -> bytes:
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


def _request_body(family: int, ports: frozenset[int] | None) -> bytes:
    sport = 0
    attrs = b""
    if ports is not None and len(ports) == 1:
        # The kernel's listener walk compares idiag_sport itself: no bytecode for one port.
        ((sport, _),) = _port_ranges(ports)
    elif ports is not None and len(_port_ranges(ports)) <= _BC_MAX_RANGES:
        code = port_filter_bytecode(ports)
        attrs = _RTATTR.pack(_NLA_HDR_LEN + len(code), INET_DIAG_REQ_BYTECODE) + code
    return (
        _REQ.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_SKMEMINFO - 1), 1 << TCP_LISTEN)
        + _SOCKID_PORTS.pack(sport, 0)
        + _SOCKID_REST.pack(b"", b"", 0, b"\xff" * 8)  # cookie: INET_DIAG_NOCOOKIE
        + attrs
    )


# --- response decoding ---


def decode_messages(data: bytes | memoryview, seq: int) -> tuple[list[ListenerSample], bool]:
    """Decode one recv() worth of netlink messages from a dump with sequence number ``seq``.

    Returns the listeners and whether the dump is complete (NLMSG_DONE seen). Messages of
    other sequence numbers (left over from an abandoned dump) are skipped. An NLMSG_ERROR or
    a negative NLMSG_DONE status raises DropMonitorError.
    """
    # Offsets into one buffer rather than slices: this loop runs once per listener per poll.
    view = memoryview(data)
    samples: list[ListenerSample] = []
    offset = 0
    end = len(view)
    while offset + _NLMSGHDR.size <= end:
        length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(view, offset)
        if length < _NLMSGHDR.size or offset + length > end:
            raise DropMonitorError(f"truncated netlink message ({length} bytes at {offset})")
        start = offset + _NLMSGHDR.size
        stop = offset + length
        offset += (length + 3) & ~3
        if msg_seq != seq:
            continue
        if kind == SOCK_DIAG_BY_FAMILY:
            samples.append(_decode_diag(view, start, stop))
        elif kind == NLMSG_DONE:
            _check_status(view[start:stop], "dump")
            return samples, True
        elif kind == NLMSG_ERROR:
            _check_status(view[start:stop], "request")  # status 0 is a plain ACK
    return samples, False


def _check_status(payload: memoryview, what: str) -> None:
    if len(payload) < _ERRNO.size:
        return  # old kernels end a dump with an empty NLMSG_DONE
    (status,) = _ERRNO.unpack_from(payload)
    if status < 0:
        raise DropMonitorError(f"sock_diag {what} failed: {os.strerror(-status)}")


def decode_diag_msg(payload: bytes | memoryview) -> ListenerSample:
    """Decode one inet_diag_msg (netlink payload, attributes included)."""
    return _decode_diag(memoryview(payload), 0, len(payload))


def _decode_diag(buf: memoryview, start: int, stop: int) -> ListenerSample:
    if stop - start < _DIAG_MSG.size:
        raise DropMonitorError(f"short inet_diag_msg ({stop - start} bytes)")
    family, sport, src, cookie_lo, cookie_hi, rqueue, wqueue, inode = _DIAG_MSG.unpack_from(
        buf, start
    )
    if family == socket.AF_INET:
        laddr = socket.inet_ntop(socket.AF_INET, src[:4])
    else:
        laddr = socket.inet_ntop(socket.AF_INET6, src)
    return ListenerSample(
        family,
        laddr,
        socket.ntohs(sport),
        inode,
        cookie_lo | cookie_hi << 32,
        rqueue,
        wqueue,
        _find_drops(buf, start + _DIAG_MSG.size, stop),
    )


def _find_drops(buf: memoryview, start: int, stop: int) -> int:
    # Every listener in a dump carries the same attributes in the same order, so the
    # SKMEMINFO offset found for one attribute-block length is tried first for the next
    # (after checking the attribute header there) instead of walking the attributes.
    offset = _SKMEMINFO_AT.get(stop - start)
    if offset is None or not _is_skmeminfo(buf, start + offset, stop):
        offset = _locate_skmeminfo(buf, start, stop)
        if len(_SKMEMINFO_AT) < 64:
            _SKMEMINFO_AT[stop - start] = offset
    return _U32.unpack_from(buf, start + offset + _RTATTR.size + SK_MEMINFO_DROPS * 4)[0]


def _is_skmeminfo(buf: memoryview, at: int, stop: int) -> bool:
    length, kind = _RTATTR.unpack_from(buf, at)
    return kind == INET_DIAG_SKMEMINFO and _SKMEMINFO_MIN_LEN <= length <= stop - at


def _locate_skmeminfo(buf: memoryview, start: int, stop: int) -> int:
    """Offset of the INET_DIAG_SKMEMINFO attribute relative to ``start``."""
    at = start
    while at + _RTATTR.size <= stop:
        length, kind = _RTATTR.unpack_from(buf, at)
        if length < _RTATTR.size or at + length > stop:
            break
        if kind == INET_DIAG_SKMEMINFO:
            if length < _SKMEMINFO_MIN_LEN:  # kernels before 3.9 export 8 values only
                raise DropMonitorError("kernel does not report SK_MEMINFO_DROPS")
            return at - start
        at += (length + 3) & ~3
    raise DropMonitorError("inet_diag reply has no INET_DIAG_SKMEMINFO attribute")


# --- socket inode -> owning process ---


class _OwnerCache:
    """inode -> (pid, comm), filled by scanning /proc/*/fd only for inodes not yet known.

    A listener inherited across fork() (pre-forking servers) is open in several processes;
    the lowest pid holding it is reported, usually the parent that created it. pid 1 comes
    last: with socket activation systemd holds the listener too, but the service accepts.
    """

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._known: dict[int, tuple[int, str | None]] = {}
        self._misses: dict[int, float] = {}  # inode -> monotonic time of the failed scan

    def lookup(self, inodes: Iterable[int]) -> dict[int, tuple[int, str | None]]:
        now = time.monotonic()
        found: dict[int, tuple[int, str | None]] = {}
        wanted: set[int] = set()
        for inode in inodes:
            owner = self._known.get(inode)
            if owner is not None and os.path.exists(f"{self._proc}/{owner[0]}"):
                found[inode] = owner
            elif now - self._misses.get(inode, -_OWNER_MISS_RETRY_S) >= _OWNER_MISS_RETRY_S:
                wanted.add(inode)
        if wanted:
            scanned = self._scan(wanted)
            for inode in wanted:
                if inode in scanned:
                    self._known[inode] = found[inode] = scanned[inode]
                    self._misses.pop(inode, None)
                else:
                    self._known.pop(inode, None)
                    self._misses[inode] = now
        return found

    def forget(self, inode: int) -> None:
        self._known.pop(inode, None)
        self._misses.pop(inode, None)

    def _scan(self, wanted: set[int]) -> dict[int, tuple[int, str | None]]:
        targets = {f"socket:[{inode}]": inode for inode in wanted}
        owners: dict[int, tuple[int, str | None]] = {}
        for pid in self._pids():
            for link in self._fd_links(pid):
                inode = targets.pop(link, None)
                if inode is not None:
                    owners[inode] = (pid, self._comm(pid))
            if not targets:
                break
        return owners

    def _pids(self) -> list[int]:
        try:
            names = os.listdir(self._proc)
        except OSError:
            return []  # no /proc (odd container): report drops without owners
        pids = sorted(int(name) for name in names if name.isdigit())
        if pids and pids[0] == 1:
            pids.append(pids.pop(0))
        return pids

    def _fd_links(self, pid: int) -> Iterator[str]:
        # Processes exit and fds close while we look; other users' fds are unreadable
        # without CAP_SYS_PTRACE. Either way that process simply owns nothing we can see.
        try:
            with os.scandir(f"{self._proc}/{pid}/fd") as entries:
                for entry in entries:
                    try:
                        yield os.readlink(entry.path)
                    except OSError:
                        continue
        except OSError:
            return

    def _comm(self, pid: int) -> str | None:
        try:
            with open(f"{self._proc}/{pid}/comm", encoding="utf-8", errors="replace") as f:
                return f.read().rstrip("\n")
        except OSError:
            return None


# --- the monitor ---


class ListenerDropMonitor:
    """Reports, per TCP listener, the connections the kernel refused since the last poll.

    Baseline rule: listeners present at the first poll() start from their counter at that
    moment (drops from before tracing are history, not news). A listener first seen at a
    later poll was created after tracing started, so it starts from 0 and all of its drops
    are reported; the caller should therefore poll() once right when tracing starts.
    Drops a listener takes between the last poll and its close() are not seen (the socket is
    gone before it can be sampled); the system-wide read_listen_overflows() still counts them.

    Sees the listeners of the caller's network namespace only. Not thread-safe.
    """

    def __init__(self, ports: frozenset[int] | None = None) -> None:
        self._ports = frozenset(ports) if ports is not None else None
        if self._ports is not None:
            _port_ranges(self._ports)  # fail early on bad ports
        # The request never changes but for its sequence number: build the bodies once.
        self._bodies = {f: _request_body(f, self._ports) for f in (socket.AF_INET, socket.AF_INET6)}
        self._buf = bytearray(_RECV_BUF)
        self._seq = 0
        # cookie -> (sk_drops at the last poll, inode); None until the baseline poll.
        self._last: dict[int, tuple[int, int]] | None = None
        self._tombstones: dict[int, int] = {}  # cookie -> last sk_drops of a vanished listener
        self._owners = _OwnerCache()
        self._sock: socket.socket | None = self._open()  # fail here, not at the first poll

    def poll(self) -> list[DropReport]:
        samples = self._sample()
        if self._last is None:
            self._last = {s.cookie: (s.drops, s.inode) for s in samples}
            return []
        return self._diff(samples)

    def flush(self) -> list[DropReport]:
        """Final poll at exit: whatever the counters gained since the last poll."""
        return self.poll()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ListenerDropMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _diff(self, samples: list[ListenerSample]) -> list[DropReport]:
        assert self._last is not None
        current: dict[int, tuple[int, int]] = {}
        rising: list[tuple[ListenerSample, int]] = []
        for s in samples:
            if s.cookie in current:
                continue  # a dump racing with bind/close can return a socket twice
            previous = self._last.get(s.cookie)
            # New since the last poll: a listener we saw before (tombstone) or one that
            # appeared after tracing started, whose every drop is news.
            before = previous[0] if previous is not None else self._tombstones.pop(s.cookie, 0)
            current[s.cookie] = (s.drops, s.inode)
            delta = (s.drops - before) & 0xFFFFFFFF  # sk_drops is a wrapping 32-bit counter
            if delta:
                rising.append((s, delta))
        for cookie, (drops, inode) in self._last.items():
            if cookie not in current:
                self._bury(cookie, drops)
                self._owners.forget(inode)
        self._last = current
        return self._reports(rising)

    def _bury(self, cookie: int, drops: int) -> None:
        if len(self._tombstones) >= _TOMBSTONES_MAX:
            del self._tombstones[next(iter(self._tombstones))]  # oldest first
        self._tombstones[cookie] = drops

    def _reports(self, rising: list[tuple[ListenerSample, int]]) -> list[DropReport]:
        if not rising:
            return []
        owners = self._owners.lookup(s.inode for s, _ in rising)
        reports = []
        for s, delta in rising:
            pid, comm = owners.get(s.inode, (None, None))
            reports.append(
                DropReport(
                    laddr=s.laddr,
                    lport=s.lport,
                    family=s.family,
                    pid=pid,
                    comm=comm,
                    backlog=s.backlog,
                    backlog_max=s.backlog_max,
                    dropped=delta,
                    inode=s.inode,
                )
            )
        return reports

    def _sample(self) -> list[ListenerSample]:
        samples: list[ListenerSample] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            samples.extend(self._dump(family))
        if self._ports is not None:
            # The kernel filtered already; this covers a filter too big to send.
            samples = [s for s in samples if s.lport in self._ports]
        return samples

    def _dump(self, family: int) -> list[ListenerSample]:
        if self._sock is None:
            self._sock = self._open()
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        try:
            return self._run_dump(self._sock, family, self._seq)
        except (OSError, DropMonitorError):
            # A dump abandoned halfway keeps the socket busy (EBUSY for the next request):
            # start the next poll on a fresh socket.
            self.close()
            raise

    def _run_dump(self, sock: socket.socket, family: int, seq: int) -> list[ListenerSample]:
        try:
            sock.send(_frame(self._bodies[family], seq))
        except OSError as exc:
            raise DropMonitorError(f"sock_diag request failed: {_reason(exc)}") from None
        samples: list[ListenerSample] = []
        view = memoryview(self._buf)
        while True:
            try:
                n = sock.recv_into(self._buf)
            except OSError as exc:
                raise DropMonitorError(f"sock_diag receive failed: {_reason(exc)}") from None
            if n == 0:
                raise DropMonitorError("sock_diag dump ended without NLMSG_DONE")
            batch, done = decode_messages(view[:n], seq)
            samples.extend(batch)
            if done:
                return samples

    @staticmethod
    def _open() -> socket.socket:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        except OSError as exc:
            raise DropMonitorError(f"cannot open sock_diag socket: {_reason(exc)}") from None
        try:
            sock.bind((0, 0))
            sock.settimeout(_DUMP_TIMEOUT_S)
        except OSError as exc:
            sock.close()
            raise DropMonitorError(f"cannot bind sock_diag socket: {_reason(exc)}") from None
        return sock


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__  # socket.timeout has no strerror


# --- system-wide counters ---


def read_listen_overflows(path: str = "/proc/net/netstat") -> tuple[int, int]:
    """(ListenOverflows, ListenDrops) of the caller's network namespace."""
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise DropMonitorError(f"cannot read {path}: {_reason(exc)}") from None
    # The file is pairs of lines: "TcpExt: Name1 Name2 ..." then "TcpExt: 1 2 ...".
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            try:
                return int(table["ListenOverflows"]), int(table["ListenDrops"])
            except (KeyError, ValueError):
                break
    raise DropMonitorError(f"no TcpExt ListenOverflows/ListenDrops in {path}")
