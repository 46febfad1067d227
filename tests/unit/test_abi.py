"""Issue 9: the record's layout comes from the BPF object's BTF, fields by name.

Builds edited copies of the object with clang (no kernel needed to read their BTF)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from tcpaccept import libbpf
from tcpaccept.aggregate import Layouts, ListenerKey, merge_cpus
from tcpaccept.btf import Btf, DataSection, kernel_btf_has_name
from tcpaccept.errors import TcpacceptError
from tcpaccept.event import PACKAGED_OBJECT, Decoder, RecordLayout
from tests.support.bpf_variants import BPF_SOURCES, build_variant, replace, swap_members
from tests.support.records import encode_record

FIELDS = dict(pid=4242, tid=4243, uid=33, netns=4026531840, comm="nginx",
              family=socket.AF_INET, lport=80, rport=51234,
              laddr=socket.inet_aton("192.168.0.1") + bytes(12),
              raddr=socket.inet_aton("10.1.2.3") + bytes(12),
              backlog=3, backlog_max=511, fd=7, listen_fd=6, cgroup_id=77,
              ts_ns=5_000_000_000, queue_latency_ns=1_234_567, probe=1)


def decoded(layout: RecordLayout) -> tuple:
    e = Decoder(layout, boot_to_wall_ns=0).decode(encode_record(layout, **FIELDS))
    return (e.pid, e.tid, e.uid, e.netns, e.comm, e.lport, e.rport, e.laddr, e.raddr,
            e.backlog, e.backlog_max, e.fd, e.listen_fd, e.cgroup_id, e.time_ns,
            e.queue_latency_ns, e.probe)


EXPECTED = (4242, 4243, 33, 4026531840, "nginx", 80, 51234, "192.168.0.1", "10.1.2.3",
            3, 511, 7, 6, 77, 5_000_000_000, 1_234_567, "tracepoint")


def test_packaged_object_decodes_every_field() -> None:
    assert decoded(RecordLayout.from_object(PACKAGED_OBJECT)) == EXPECTED


def test_swapped_fields_move_in_the_record_and_still_decode_by_name(tmp_path: Path) -> None:
    obj = build_variant(tmp_path, {"tcpaccept.h": lambda text: swap_members("rport", "lport")(
        swap_members("laddr", "raddr")(swap_members("uid", "netns")(text)))})
    original, swapped = RecordLayout.from_object(PACKAGED_OBJECT), RecordLayout.from_object(obj)
    # Positive control: the variant really has another layout, of the same size...
    for a, b in (("lport", "rport"), ("laddr", "raddr"), ("uid", "netns")):
        assert swapped.field(a).offset == original.field(b).offset
    assert swapped.size == original.size
    # ... so the packaged layout reads its records wrong, the variant's own reads them right.
    raw = encode_record(swapped, **FIELDS)
    wrong = Decoder(original, boot_to_wall_ns=0).decode(raw)
    assert (wrong.lport, wrong.raddr, wrong.uid) == (51234, "192.168.0.1", 4026531840)
    assert decoded(swapped) == EXPECTED


@pytest.mark.parametrize("edits,named", [
    ({"tcpaccept.h": replace("__u16 lport;", "__u16 local_port;"),
      "accept.bpf.h": replace("e->lport", "e->local_port")}, "'lport'"),
    ({"tcpaccept.h": replace("__u16 lport;", "__u32 lport;")}, "'lport'"),
    ({"tcpaccept.h": replace("__s32 fd;", "__u32 fd;")}, "'fd'"),
    ({"tcpaccept.h": replace("__u8 raddr[16];", "__u8 raddr[4];"),
      "accept.bpf.h": replace("__builtin_memset(e->raddr, 0, sizeof(e->raddr));", "")
      }, "'raddr'"),
], ids=["renamed", "resized", "signedness", "shorter-array"])
def test_a_renamed_or_resized_field_fails_with_one_line_naming_it(
        tmp_path: Path, edits: dict, named: str) -> None:
    obj = build_variant(tmp_path, edits)
    with pytest.raises(TcpacceptError) as failure:
        RecordLayout.from_object(obj)
    message = str(failure.value)
    assert named in message and "\n" not in message
    assert obj.name in message


def test_probe_names_and_comm_length_come_from_the_object(tmp_path: Path) -> None:
    obj = build_variant(tmp_path, {"tcpaccept.h": replace(
        "\tPROBE_FEXIT = 3,\n", "\tPROBE_FEXIT = 3,\n\tPROBE_SOMETHING_NEW = 9,\n")})
    layout = RecordLayout.from_object(obj)
    assert layout.probe_names[9] == "something_new"
    assert Decoder(layout).decode(encode_record(layout, **{**FIELDS, "probe": 9})).probe \
        == "something_new"
    assert RecordLayout.from_object(PACKAGED_OBJECT).comm_len == 16


def test_rodata_variables_are_set_by_name_and_checked() -> None:
    with libbpf.BpfObject(str(PACKAGED_OBJECT)) as obj:
        rodata = DataSection(obj, Btf.of_object(obj))
        rodata.set("target_uid", 0x01020304)
        rodata.set("filter_uid", True)
        data = bytes(obj.map(".rodata").initial_value())
        assert (0x01020304).to_bytes(4, "little") in data
        with pytest.raises(TcpacceptError, match="no variable 'target_gid'"):
            rodata.set("target_gid", 5)
        with pytest.raises(TcpacceptError, match="'target_uid' is 4 bytes.* writes 8"):
            rodata.set("target_uid", 5, size=8)
        with pytest.raises(TcpacceptError, match="'filter_uid' is 1 bytes.* writes 4"):
            rodata.set("filter_uid", 1)


def test_kernel_btf_names_are_whole_strings_of_the_string_section(tmp_path: Path) -> None:
    strings = b"\0file\0bpf_rdonly_cast\0"
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 0, 0, len(strings))
    btf_file = tmp_path / "vmlinux"
    btf_file.write_bytes(header + strings + b"\0outside_the_strings\0")
    assert kernel_btf_has_name("bpf_rdonly_cast", str(btf_file))
    assert not kernel_btf_has_name("bpf_rdonly_cas", str(btf_file))  # a prefix only
    assert not kernel_btf_has_name("outside_the_strings", str(btf_file))
    assert not kernel_btf_has_name("file", str(tmp_path / "missing"))


def _header_defining(struct_name: str) -> str:
    """The BPF header that defines the struct (the headers may be rearranged)."""
    (name,) = [h.name for h in BPF_SOURCES.glob("*.h")
               if f"struct {struct_name} {{" in h.read_text()]
    return name


def test_reordered_aggregation_structs_still_decode_by_name(tmp_path: Path) -> None:
    header = _header_defining("listener_stats")
    assert _header_defining("listener_key") == header
    obj = build_variant(tmp_path, {header: lambda text: swap_members("family", "lport")(
        swap_members("accepts", "last_seen_ns")(swap_members("backlog", "pid")(text)))})
    packaged, variant = Layouts.of_file(str(PACKAGED_OBJECT)), Layouts.of_file(str(obj))
    # Positive control: the members really moved.
    offsets = {layout: {m[0]: m[1] for m in layout.members}
               for layout in (packaged.stats, variant.stats)}
    assert offsets[variant.stats]["accepts"] == offsets[packaged.stats]["last_seen_ns"]
    stats = dict(accepts=5, last_seen_ns=9_000, backlog=3, pid=4242, comm=b"nginx",
                 latency_slots=[1] * 32, backlog_max=128)
    raw = variant.stats.encode(**stats)
    totals = merge_cpus([variant.stats.decode(raw)])
    assert (totals.accepts, totals.last_seen_ns, totals.backlog, totals.pid, totals.comm) == \
        (5, 9_000, 3, 4242, "nginx")
    assert merge_cpus([packaged.stats.decode(raw)]).accepts == 9_000  # read wrong by the other
    key = ListenerKey(netns=7, family=4, laddr="10.0.0.1", lport=8080, cgroup_id=1)
    assert ListenerKey.of(variant.key.decode(variant.key.encode(**key.fields()))) == key
