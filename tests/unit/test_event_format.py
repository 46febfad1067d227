"""Decoding of synthetic kernel records and the output formats, without a kernel."""

from __future__ import annotations

import json
import socket

from tcpaccept.event import Decoder, RecordLayout
from tcpaccept.model import Container
from tcpaccept.output.json_lines import JsonFormatter
from tcpaccept.output.text import TextFormatter
from tests.support.records import encode_record

V4 = socket.inet_pton(socket.AF_INET, "10.1.2.3") + b"\0" * 12
V4_LOCAL = socket.inet_pton(socket.AF_INET, "192.168.0.1") + b"\0" * 12
MAPPED = socket.inet_pton(socket.AF_INET6, "::ffff:10.1.2.3")
V6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
LAYOUT = RecordLayout.from_object()  # the packaged object's BTF


def record(**fields) -> bytes:
    base = dict(pid=4242, tid=4243, comm="nginx", family=socket.AF_INET, lport=80,
                rport=51234, laddr=V4_LOCAL, raddr=V4, backlog=3, backlog_max=511,
                fd=7, listen_fd=6, uid=33, netns=4026531840, cgroup_id=77,
                ts_ns=5_000_000_000, queue_latency_ns=1_234_567)
    base.update(fields)
    return encode_record(LAYOUT, **base)


def test_record_layout_comes_from_the_object() -> None:
    # struct accept_event is 112 bytes: 3 u64, 8 u32/s32, 3 u16, 2 u8, 3 x 16 bytes.
    assert LAYOUT.size == LAYOUT.struct.size == 112
    assert LAYOUT.ring_slot_bytes == 120
    assert LAYOUT.comm_len == 16
    assert LAYOUT.probe_names == {1: "tracepoint", 2: "kprobe", 3: "fexit", 4: "io_uring"}


def test_decodes_ipv4_event() -> None:
    e = Decoder(LAYOUT, boot_to_wall_ns=0).decode(record())
    assert (e.pid, e.tid, e.comm, e.family) == (4242, 4243, "nginx", 4)
    assert (e.raddr, e.rport, e.laddr, e.lport) == ("10.1.2.3", 51234, "192.168.0.1", 80)
    assert (e.backlog, e.backlog_max, e.fd, e.listen_fd) == (3, 511, 7, 6)
    assert e.queue_latency_ns == 1_234_567
    assert e.time_ns == 5_000_000_000


def test_ipv4_mapped_client_is_unmapped_unless_asked() -> None:
    raw = record(family=socket.AF_INET6, raddr=MAPPED, laddr=MAPPED)
    e = Decoder(LAYOUT).decode(raw)
    assert (e.family, e.raddr) == (4, "10.1.2.3")
    e = Decoder(LAYOUT, unmap_ipv4=False).decode(raw)
    assert (e.family, e.raddr) == (6, "::ffff:10.1.2.3")


def test_ipv6_is_compressed() -> None:
    e = Decoder(LAYOUT).decode(record(family=socket.AF_INET6, raddr=V6, laddr=V6))
    assert (e.family, e.raddr) == (6, "2001:db8::1")


def test_unmeasured_latency_is_none() -> None:
    assert Decoder(LAYOUT).decode(record(queue_latency_ns=0)).queue_latency_ns is None


def test_text_row_has_the_seed_widths() -> None:
    e = Decoder(LAYOUT, boot_to_wall_ns=0).decode(record())
    row = TextFormatter().line(e)
    expected_tail = (f"{4242:<6} {'nginx':<14} {'10.1.2.3':<39} {51234:<5} "
                     f"{'192.168.0.1':<39} {80:<5} 3/511")
    assert row[8:] == " " + expected_tail
    assert row[2] == ":" and row[5] == ":"


def test_relative_time_and_extra_columns() -> None:
    e = Decoder(LAYOUT, boot_to_wall_ns=0).decode(record())
    text = TextFormatter(relative_to_ns=3_500_000_000, extended=True, latency=True,
                         cgroup_path=lambda _id: "/system.slice/nginx.service")
    assert text.header().startswith("TIME(s)  PID")
    assert text.header().endswith(
        "QLAT(ms) UID    NETNS       FD    CONTAINER            CGROUP")
    row = text.line(e)
    assert row.startswith("1.500    4242")
    assert row.endswith(
        "     1.235 33     4026531840  7     -                    /system.slice/nginx.service")
    named = e._replace(container=Container(id="ab" * 32, name="web"))
    assert text.line(named).endswith(f" {'web':<20} /system.slice/nginx.service")
    unnamed = e._replace(container=Container(id="ab" * 32))
    assert text.line(unnamed).endswith(f" {'abababababab':<20} /system.slice/nginx.service")


def test_json_object_has_every_key() -> None:
    e = Decoder(LAYOUT).decode(record(comm='we"ird'))
    obj = json.loads(JsonFormatter().line(e))
    assert obj["comm"] == 'we"ird'
    assert obj["queue_latency_us"] == 1234.567
    assert obj["event"] == "accept"
    assert obj["family"] == 4 and obj["fd"] == 7 and obj["cgroup_id"] == 77
    assert (obj["container_id"], obj["container"], obj["pod"], obj["namespace"]) == (
        None, None, None, None)


def test_json_names_the_container_and_pod() -> None:
    pod = Container(id="cd" * 32, name="app", pod="web-0", namespace="shop",
                    runtime="containerd")
    e = Decoder(LAYOUT).decode(record())._replace(container=pod)
    obj = json.loads(JsonFormatter().line(e))
    assert (obj["container_id"], obj["container"], obj["pod"], obj["namespace"]) == (
        "cd" * 32, "app", "web-0", "shop")


def test_json_fd_is_null_when_the_method_cannot_know_it() -> None:
    obj = json.loads(JsonFormatter().line(Decoder(LAYOUT).decode(record(fd=-1, listen_fd=-1))))
    assert obj["fd"] is None and obj["listen_fd"] is None
