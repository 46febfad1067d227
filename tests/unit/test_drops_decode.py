"""Decoding of synthetic sock_diag replies and the monitor's bookkeeping, no kernel needed."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

import pytest

from tcpaccept.drops import (
    DropMonitorError,
    ListenerDropMonitor,
    ListenerSample,
    build_dump_request,
    decode_diag_msg,
    decode_messages,
    port_filter_bytecode,
)
from tcpaccept.drops import abi as drops
from tcpaccept.drops.owners import OwnerCache
from tcpaccept.model import Drop
from tests.support.overflow import read_listen_overflows

SEQ = 7
INET_DIAG_SHUTDOWN = 8
INET_DIAG_CONG = 4
INET_DIAG_SKV6ONLY = 11


# --- byte builders (layouts from include/uapi/linux/{netlink,inet_diag}.h) ---


def rtattr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def skmeminfo(drops_: int, nvalues: int = 10) -> bytes:
    values = [100 + i for i in range(nvalues)]
    if nvalues > drops.SK_MEMINFO_DROPS:
        values[drops.SK_MEMINFO_DROPS] = drops_
    return rtattr(drops.INET_DIAG_SKMEMINFO, struct.pack(f"={nvalues}I", *values))


def diag_msg(
    family: int,
    addr: str,
    port: int,
    *,
    inode: int = 4242,
    cookie: int = 0x1122334455667788,
    rqueue: int = 3,
    wqueue: int = 128,
    attrs: bytes | None = None,
    drops_: int = 5,
) -> bytes:
    src = socket.inet_pton(family, addr).ljust(16, b"\0")
    sockid = (
        struct.pack("!HH", port, 0)
        + src
        + b"\0" * 16
        + struct.pack("=III", 0, cookie & 0xFFFFFFFF, cookie >> 32)
    )
    head = struct.pack("=BBBB", family, drops.TCP_LISTEN, 0, 0)
    tail = struct.pack("=IIIII", 0, rqueue, wqueue, 1000, inode)
    if attrs is None:
        attrs = rtattr(INET_DIAG_SHUTDOWN, b"\0") + skmeminfo(drops_)
    msg = head + sockid + tail
    assert len(msg) == 72  # sizeof(struct inet_diag_msg)
    return msg + attrs


def nlmsg(kind: int, payload: bytes, seq: int = SEQ, flags: int = 2) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 1234) + payload
    return raw + b"\0" * (-len(raw) % 4)


def done(status: int = 0) -> bytes:
    return nlmsg(drops.NLMSG_DONE, struct.pack("=i", status))


def error(status: int) -> bytes:
    return nlmsg(drops.NLMSG_ERROR, struct.pack("=i", status) + b"\0" * 16)


# --- inet_diag_msg ---


def test_ipv4_listener_fields() -> None:
    sample = decode_diag_msg(
        diag_msg(socket.AF_INET, "127.0.0.1", 8080, inode=99, rqueue=2, wqueue=1, drops_=18)
    )
    assert sample == ListenerSample(
        family=socket.AF_INET,
        laddr="127.0.0.1",
        lport=8080,
        inode=99,
        cookie=0x1122334455667788,
        backlog=2,
        backlog_max=1,
        drops=18,
    )


@pytest.mark.parametrize(
    ("addr", "printable"),
    [
        ("::1", "::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("::", "::"),
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1"),
    ],
)
def test_ipv6_address_is_compressed(addr: str, printable: str) -> None:
    attrs = rtattr(INET_DIAG_SKV6ONLY, b"\1") + skmeminfo(1)
    sample = decode_diag_msg(diag_msg(socket.AF_INET6, addr, 443, attrs=attrs))
    assert (sample.family, sample.laddr, sample.lport) == (socket.AF_INET6, printable, 443)


def test_port_is_network_order() -> None:
    assert decode_diag_msg(diag_msg(socket.AF_INET, "0.0.0.0", 0x1234)).lport == 0x1234


def test_skmeminfo_found_among_padded_attributes() -> None:
    # 5-byte and 7-byte attributes need padding; SKMEMINFO comes last, as on 6.x kernels.
    attrs = (
        rtattr(INET_DIAG_SHUTDOWN, b"\0")
        + rtattr(INET_DIAG_CONG, b"bbr\0\0\0")
        + rtattr(22, b"\0\0")
        + skmeminfo(77)
    )
    assert decode_diag_msg(diag_msg(socket.AF_INET, "10.1.2.3", 80, attrs=attrs)).drops == 77


def test_skmeminfo_with_more_values_than_known() -> None:
    attrs = skmeminfo(12, nvalues=16)  # a future kernel exporting more SK_MEMINFO_* values
    assert decode_diag_msg(diag_msg(socket.AF_INET, "10.1.2.3", 80, attrs=attrs)).drops == 12


def test_cached_skmeminfo_offset_is_checked() -> None:
    # Same attribute-block length, SKMEMINFO at different offsets: the offset remembered
    # from the first message must not be trusted blindly for the second.
    first = skmeminfo(1) + rtattr(INET_DIAG_SHUTDOWN, b"\0")
    second = rtattr(INET_DIAG_SHUTDOWN, b"\0") + skmeminfo(2)
    assert len(first) == len(second)
    data = nlmsg(drops.SOCK_DIAG_BY_FAMILY, diag_msg(socket.AF_INET, "1.1.1.1", 1, attrs=first))
    data += nlmsg(drops.SOCK_DIAG_BY_FAMILY, diag_msg(socket.AF_INET, "1.1.1.1", 2, attrs=second))
    samples, _ = decode_messages(data, SEQ)
    assert [s.drops for s in samples] == [1, 2]


def test_old_kernel_without_sk_meminfo_drops() -> None:
    attrs = skmeminfo(0, nvalues=8)  # SK_MEMINFO_DROPS arrived in Linux 3.9
    with pytest.raises(DropMonitorError, match="SK_MEMINFO_DROPS"):
        decode_diag_msg(diag_msg(socket.AF_INET, "1.1.1.1", 1, attrs=attrs))


def test_missing_skmeminfo() -> None:
    attrs = rtattr(INET_DIAG_SHUTDOWN, b"\0")
    with pytest.raises(DropMonitorError, match="no INET_DIAG_SKMEMINFO"):
        decode_diag_msg(diag_msg(socket.AF_INET, "1.1.1.1", 1, attrs=attrs))


def test_short_diag_msg() -> None:
    with pytest.raises(DropMonitorError, match="short inet_diag_msg"):
        decode_diag_msg(b"\0" * 40)


# --- netlink framing ---


def test_multipart_dump_then_done() -> None:
    data = (
        nlmsg(drops.SOCK_DIAG_BY_FAMILY, diag_msg(socket.AF_INET, "127.0.0.1", 1, drops_=1))
        + nlmsg(drops.SOCK_DIAG_BY_FAMILY, diag_msg(socket.AF_INET, "0.0.0.0", 2, drops_=2))
        + done()
    )
    samples, finished = decode_messages(data, SEQ)
    assert finished
    assert [(s.laddr, s.lport, s.drops) for s in samples] == [
        ("127.0.0.1", 1, 1),
        ("0.0.0.0", 2, 2),
    ]


def test_dump_continues_in_next_buffer() -> None:
    samples, finished = decode_messages(
        nlmsg(drops.SOCK_DIAG_BY_FAMILY, diag_msg(socket.AF_INET, "127.0.0.1", 1)), SEQ
    )
    assert not finished
    assert len(samples) == 1


def test_empty_dump() -> None:
    assert decode_messages(done(), SEQ) == ([], True)


def test_empty_done_payload_of_old_kernels() -> None:
    assert decode_messages(nlmsg(drops.NLMSG_DONE, b""), SEQ) == ([], True)


def test_messages_of_other_dumps_are_skipped() -> None:
    stale = nlmsg(drops.SOCK_DIAG_BY_FAMILY, diag_msg(socket.AF_INET, "9.9.9.9", 9), seq=SEQ - 1)
    stale_done = nlmsg(drops.NLMSG_DONE, struct.pack("=i", 0), seq=SEQ - 1)
    data = (
        stale
        + stale_done
        + nlmsg(drops.SOCK_DIAG_BY_FAMILY, diag_msg(socket.AF_INET, "1.2.3.4", 5))
    )
    samples, finished = decode_messages(data, SEQ)
    assert not finished
    assert [s.laddr for s in samples] == ["1.2.3.4"]


def test_nlmsg_error_raises() -> None:
    with pytest.raises(DropMonitorError, match="request failed: " + os.strerror(errno.EPERM)):
        decode_messages(error(-errno.EPERM), SEQ)


def test_nlmsg_error_zero_is_an_ack() -> None:
    assert decode_messages(error(0) + done(), SEQ) == ([], True)


def test_done_with_error_status_raises() -> None:
    with pytest.raises(DropMonitorError, match="dump failed: " + os.strerror(errno.EINTR)):
        decode_messages(done(-errno.EINTR), SEQ)


def test_truncated_message_raises() -> None:
    data = nlmsg(drops.SOCK_DIAG_BY_FAMILY, diag_msg(socket.AF_INET, "1.2.3.4", 5))
    with pytest.raises(DropMonitorError, match="truncated"):
        decode_messages(data[:-8], SEQ)


def test_error_messages_are_one_line() -> None:
    with pytest.raises(DropMonitorError) as info:
        decode_messages(done(-errno.ENOBUFS), SEQ)
    assert "\n" not in str(info.value)


# --- request ---


def parse_request(raw: bytes) -> dict[str, object]:
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", raw)
    family, proto, ext, _pad, states = struct.unpack_from("=BBBBI", raw, 16)
    sport, dport = struct.unpack_from("!HH", raw, 24)
    cookie = raw[16 + 8 + 40 : 16 + 8 + 48]
    return {
        "length": length,
        "real_length": len(raw),
        "type": kind,
        "flags": flags,
        "seq": seq,
        "family": family,
        "protocol": proto,
        "ext": ext,
        "states": states,
        "sport": sport,
        "dport": dport,
        "cookie": cookie,
        "attrs": raw[16 + 56 :],
    }


def test_dump_request_layout() -> None:
    req = parse_request(build_dump_request(socket.AF_INET6, 42))
    assert req["length"] == req["real_length"] == 16 + 56
    assert req["type"] == 20  # SOCK_DIAG_BY_FAMILY
    assert req["flags"] == 0x301  # NLM_F_REQUEST | NLM_F_DUMP
    assert req["seq"] == 42
    assert (req["family"], req["protocol"]) == (socket.AF_INET6, socket.IPPROTO_TCP)
    assert req["ext"] == 1 << (7 - 1)  # INET_DIAG_SKMEMINFO
    assert req["states"] == 1 << 10  # TCP_LISTEN
    assert (req["sport"], req["dport"]) == (0, 0)
    assert req["cookie"] == b"\xff" * 8  # INET_DIAG_NOCOOKIE
    assert req["attrs"] == b""


def test_single_port_goes_in_the_socket_id() -> None:
    req = parse_request(build_dump_request(socket.AF_INET, 1, frozenset({8080})))
    assert req["sport"] == 8080
    assert req["attrs"] == b""


def test_several_ports_go_in_bytecode() -> None:
    req = parse_request(build_dump_request(socket.AF_INET, 1, frozenset({80, 443})))
    assert req["sport"] == 0
    attrs = req["attrs"]
    assert isinstance(attrs, bytes)
    length, kind = struct.unpack_from("=HH", attrs)
    assert kind == 1  # INET_DIAG_REQ_BYTECODE
    assert attrs[4:length] == port_filter_bytecode({80, 443})
    assert req["length"] == req["real_length"]


def audit_and_run(code: bytes, port: int) -> bool:
    """Python port of the kernel's inet_diag_bc_audit() + inet_diag_bc_run() for the ops
    port_filter_bytecode() emits; the audit raises like the kernel's EINVAL."""
    op = struct.Struct("=BBH")
    # audit: follows the "yes" edges; every "no" must land on an op or just past the end.
    boundaries = set()
    at = 0
    while at < len(code):
        boundaries.add(at)
        kind, yes, no = op.unpack_from(code, at)
        min_len = 8 if kind in (drops.INET_DIAG_BC_S_GE, drops.INET_DIAG_BC_S_LE) else 4
        assert kind in (drops.INET_DIAG_BC_JMP, drops.INET_DIAG_BC_S_GE, drops.INET_DIAG_BC_S_LE)
        remaining = len(code) - at
        assert min_len <= no <= remaining + 4 and no % 4 == 0
        assert min_len <= yes <= remaining + 4 and yes % 4 == 0
        at += yes
    assert at == len(code)
    at = 0
    while at < len(code):
        kind, yes, no = op.unpack_from(code, at)
        if no < len(code) - at:
            assert at + no in boundaries
        at += yes
    # run
    at = 0
    remaining = len(code)
    while remaining > 0:
        kind, yes, no = op.unpack_from(code, at)
        if kind == drops.INET_DIAG_BC_JMP:
            ok = False
        else:
            bound = op.unpack_from(code, at + 4)[2]
            ok = port >= bound if kind == drops.INET_DIAG_BC_S_GE else port <= bound
        step = yes if ok else no
        at += step
        remaining -= step
    return remaining == 0


@pytest.mark.parametrize(
    "ports",
    [{80}, {80, 443}, {8000, 8001, 8002, 9000}, {1, 65535}, set(range(1000, 1100, 3))],
)
def test_port_filter_bytecode_accepts_exactly_the_ports(ports: set[int]) -> None:
    code = port_filter_bytecode(ports)
    probes = set(ports) | {p + 1 for p in ports} | {p - 1 for p in ports} | {2, 1234, 50000}
    for port in sorted(p for p in probes if 0 < p < 65536):
        assert audit_and_run(code, port) == (port in ports), port


def test_port_filter_merges_consecutive_ports() -> None:
    assert len(port_filter_bytecode(range(8000, 8100))) == 16  # one range, no jump


@pytest.mark.parametrize("ports", [{0}, {65536}, {-1}])
def test_invalid_ports_rejected(ports: set[int]) -> None:
    with pytest.raises(DropMonitorError, match="invalid port"):
        ListenerDropMonitor(frozenset(ports))


def test_huge_port_filter_is_done_in_user_space() -> None:
    ports = frozenset(range(2, 10000, 2))  # 4999 ranges: too many jumps for 16-bit offsets
    assert parse_request(build_dump_request(socket.AF_INET, 1, ports))["attrs"] == b""


# --- /proc/net/netstat ---

NETSTAT = """\
TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPHPHits
TcpExt: 0 0 18 21 5
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
"""


def test_read_listen_overflows(tmp_path) -> None:
    path = tmp_path / "netstat"
    path.write_text(NETSTAT)
    assert read_listen_overflows(str(path)) == (18, 21)


def test_read_listen_overflows_missing_counters(tmp_path) -> None:
    path = tmp_path / "netstat"
    path.write_text("IpExt: InNoRoutes\nIpExt: 0\n")
    with pytest.raises(ValueError, match="ListenOverflows"):
        read_listen_overflows(str(path))


# --- the monitor's bookkeeping, fed synthetic samples ---


def sample(cookie: int, drops_: int, port: int = 80, inode: int = 0) -> ListenerSample:
    return ListenerSample(socket.AF_INET, "0.0.0.0", port, inode or cookie, cookie, 1, 128, drops_)


class FakeOwners:
    def __init__(self) -> None:
        self.forgotten: list[int] = []

    def lookup(self, inodes) -> dict[int, tuple[int, str]]:
        return {inode: (inode * 10, f"proc{inode}") for inode in inodes}

    def forget(self, inode: int) -> None:
        self.forgotten.append(inode)


@pytest.fixture
def fed(monkeypatch):
    """A monitor whose dumps return what the test puts in ``feed``."""
    monitor = ListenerDropMonitor(all_namespaces=False)
    feed: list[ListenerSample] = []
    monkeypatch.setattr(monitor, "_sample", lambda _ns: list(feed))
    monkeypatch.setattr(monitor, "_owners", FakeOwners())
    yield monitor, feed
    monitor.close()


def test_first_poll_is_the_baseline(fed) -> None:
    monitor, feed = fed
    feed[:] = [sample(1, 500)]
    assert monitor.poll() == []
    feed[:] = [sample(1, 503)]
    before_ns = time.time_ns()
    (report,) = monitor.poll()
    assert before_ns <= report.time_ns <= time.time_ns()
    assert report == Drop(
        laddr="0.0.0.0",
        lport=80,
        family=socket.AF_INET,
        pid=10,
        comm="proc1",
        backlog=1,
        backlog_max=128,
        dropped=3,
        inode=1,
        netns=os.stat("/proc/thread-self/ns/net").st_ino,
        time_ns=report.time_ns,
    )
    assert monitor.poll() == []


def test_listener_appearing_later_counts_from_zero(fed) -> None:
    monitor, feed = fed
    feed[:] = [sample(1, 0)]
    monitor.poll()
    feed[:] = [sample(1, 0), sample(2, 4, port=81)]
    assert [(r.lport, r.dropped) for r in monitor.poll()] == [(81, 4)]


def test_vanished_listener_coming_back_resumes(fed) -> None:
    monitor, feed = fed
    feed[:] = [sample(1, 10), sample(2, 0, port=81)]
    monitor.poll()
    feed[:] = [sample(2, 0, port=81)]
    assert monitor.poll() == []
    assert monitor._owners.forgotten == [1]
    feed[:] = [sample(1, 12), sample(2, 0, port=81)]
    assert [(r.lport, r.dropped) for r in monitor.poll()] == [(80, 2)]


def test_counter_wraps(fed) -> None:
    monitor, feed = fed
    feed[:] = [sample(1, 0xFFFFFFFE)]
    monitor.poll()
    feed[:] = [sample(1, 3)]
    assert [r.dropped for r in monitor.poll()] == [5]


def test_socket_listed_twice_reported_once(fed) -> None:
    monitor, feed = fed
    feed[:] = [sample(1, 0)]
    monitor.poll()
    feed[:] = [sample(1, 2), sample(1, 2)]
    assert [r.dropped for r in monitor.poll()] == [2]


def test_flush_reports_since_last_poll(fed) -> None:
    monitor, feed = fed
    feed[:] = [sample(1, 0)]
    monitor.poll()
    feed[:] = [sample(1, 1)]
    monitor.poll()
    feed[:] = [sample(1, 7)]
    assert [r.dropped for r in monitor.flush()] == [6]


# --- inode -> process ---


def fake_proc(tmp_path, table: dict[int, tuple[str, list[str]]]):
    for pid, (comm, links) in table.items():
        fd_dir = tmp_path / str(pid) / "fd"
        fd_dir.mkdir(parents=True)
        (tmp_path / str(pid) / "comm").write_text(comm + "\n")
        for fd, target in enumerate(links):
            os.symlink(target, fd_dir / str(fd))
    (tmp_path / "self").mkdir()
    return OwnerCache(str(tmp_path))


def test_owner_lookup(tmp_path) -> None:
    owners = fake_proc(
        tmp_path,
        {
            1: ("systemd", ["socket:[500]", "socket:[600]"]),
            40: ("nginx", ["/dev/null", "socket:[500]"]),
            41: ("nginx", ["socket:[500]"]),
        },
    )
    found = owners.lookup([500, 600, 700])
    # The service, not pid 1 holding it for socket activation; pid 1 when it is the only one.
    assert found == {500: (40, "nginx"), 600: (1, "systemd")}


def test_owner_cache_rescans_only_unknown_inodes(tmp_path, monkeypatch) -> None:
    owners = fake_proc(tmp_path, {40: ("nginx", ["socket:[500]"])})
    assert owners.lookup([500]) == {500: (40, "nginx")}
    scans: list[set[int]] = []
    real_scan = owners._scan

    def counting_scan(wanted: set[int]) -> dict[int, tuple[int, str | None]]:
        scans.append(set(wanted))
        return real_scan(wanted)

    monkeypatch.setattr(owners, "_scan", counting_scan)
    assert owners.lookup([500]) == {500: (40, "nginx")}
    assert owners.lookup([700]) == {}
    assert owners.lookup([700]) == {}  # a miss is not rescanned at every poll
    assert scans == [{700}]


def test_owner_that_exited_is_looked_up_again(tmp_path) -> None:
    owners = fake_proc(tmp_path, {40: ("old", ["socket:[500]"]), 50: ("new", ["socket:[500]"])})
    assert owners.lookup([500]) == {500: (40, "old")}
    for path in sorted((tmp_path / "40").rglob("*"), reverse=True):
        path.unlink() if path.is_symlink() or path.is_file() else path.rmdir()
    (tmp_path / "40").rmdir()
    assert owners.lookup([500]) == {500: (50, "new")}
