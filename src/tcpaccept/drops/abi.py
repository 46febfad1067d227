"""The NETLINK_SOCK_DIAG / inet_diag ABI: the listener dump request and its decoding.

Layouts from include/uapi/linux/{netlink,sock_diag,inet_diag}.h. Nothing here touches a
socket, so all of it is unit-tested on synthetic bytes.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Iterable, NamedTuple

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
# Jump offsets in inet_diag bytecode are 16-bit; 20 bytes per port range keeps 2048 ranges
# well inside that. Beyond it the port filter runs in user space only.
BC_MAX_RANGES = 2048


class DropMonitorError(Exception):
    """Sampling listeners failed; the message is one line."""


class ListenerSample(NamedTuple):
    """One listener as decoded from one inet_diag_msg (a tuple: built 1000s of times a poll)."""

    family: int
    laddr: str
    lport: int
    inode: int
    cookie: int  # unique per socket (per namespace before Linux 5.12), unlike laddr/lport
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
    ranges = port_ranges(ports)
    if not ranges:
        raise DropMonitorError("port filter is empty")
    if len(ranges) > BC_MAX_RANGES:
        raise DropMonitorError(f"port filter has more than {BC_MAX_RANGES} port ranges")
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


def port_ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted runs of consecutive ports; raises DropMonitorError on a port out of 1..65535."""
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
    BC_MAX_RANGES port ranges no filter is sent).
    """
    return frame(request_body(family, ports), seq)


def frame(body: bytes, seq: int) -> bytes:
    """A request body from request_body() in its netlink header."""
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


def request_body(family: int, ports: frozenset[int] | None) -> bytes:
    """The inet_diag_req_v2 (and port filter) of a listener dump; the same for every poll."""
    sport = 0
    attrs = b""
    if ports is not None and len(ports) == 1:
        # The kernel's listener walk compares idiag_sport itself: no bytecode for one port.
        ((sport, _),) = port_ranges(ports)
    elif ports is not None and len(port_ranges(ports)) <= BC_MAX_RANGES:
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
