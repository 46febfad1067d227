"""The accept record as the BPF object defines it, and its decoding into model.Accept.

Nothing about the record is written down here: its members (offsets, sizes, signedness),
the comm length and the probe names come from the object's BTF (`struct accept_event`,
`enum accept_probe` in bpf/tcpaccept.h). Fields are matched by name, so a reordered header
still decodes right; a field this module needs that is missing, resized or of the other
signedness stops the load with one line naming it, instead of printing wrong data.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from . import btf as btf_mod
from .errors import TcpacceptError
from .model import Accept, Container
from .output.clock import WallClock

RECORD_STRUCT = "accept_event"
PROBE_ENUM = "accept_probe"
PROBE_PREFIX = "PROBE_"
PACKAGED_OBJECT = Path(__file__).with_name("bpf") / "tcpaccept.bpf.o"
OBJECT_ENV = "TCPACCEPT_BPF_OBJECT"  # another build of the object (tests, development)

# What the decoder reads, by name: (size in bytes, signed) for integers; (None, None) for
# byte arrays (addresses, comm), whose length comes from the object.
NEEDED_INTS: dict[str, tuple[int, bool]] = {
    "ts_ns": (8, False), "cgroup_id": (8, False), "queue_latency_ns": (8, False),
    "pid": (4, False), "tid": (4, False), "uid": (4, False), "netns": (4, False),
    "fd": (4, True), "listen_fd": (4, True), "backlog": (4, False), "backlog_max": (4, False),
    "family": (2, False), "lport": (2, False), "rport": (2, False), "probe": (1, False),
}
NEEDED_BYTES: dict[str, int] = {"laddr": 16, "raddr": 16, "comm": 0}  # 0: any length
_INT_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}
_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_CACHE_LIMIT = 4096  # per cache: a host has few distinct names; a scan must not grow them


def default_object_path() -> Path:
    """The BPF object to load: $TCPACCEPT_BPF_OBJECT if set, else the packaged build."""
    return Path(os.environ.get(OBJECT_ENV) or PACKAGED_OBJECT)


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int
    signed: Optional[bool]  # None for byte arrays
    length: Optional[int]  # elements of a byte array; None for integers

    @property
    def code(self) -> str:
        if self.length is not None:
            return f"{self.size}s"
        code = _INT_CODES[self.size]
        return code if self.signed else code.upper()


class RecordLayout:
    """`struct accept_event` as one object built it: one struct.Struct unpacks every field
    the decoder needs, in the order of their offsets, skipping the others as pad bytes."""

    def __init__(self, fields: list[Field], size: int, probe_names: dict[int, str],
                 source: str) -> None:
        self.fields = sorted(fields, key=lambda f: f.offset)
        self.size = size
        self.probe_names = probe_names
        self.source = source
        fmt, pos = ["<"], 0
        for field in self.fields:
            if field.offset > pos:
                fmt.append(f"{field.offset - pos}x")
            fmt.append(field.code)
            pos = field.offset + field.size
        if size > pos:
            fmt.append(f"{size - pos}x")
        self.struct = struct.Struct("".join(fmt))
        self.names = tuple(f.name for f in self.fields)  # the unpacked tuple's order
        self.comm_len = self.field("comm").length or 0

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    @property
    def ring_slot_bytes(self) -> int:
        """One record in the ring buffer: an 8-byte header, the record rounded up to 8."""
        return 8 + (self.size + 7) // 8 * 8

    @classmethod
    def from_btf(cls, btf: btf_mod.Btf, source: str) -> RecordLayout:
        struct_id = btf.find(RECORD_STRUCT, btf_mod.BTF_KIND_STRUCT)
        if struct_id is None:
            raise _mismatch(source, f"has no struct {RECORD_STRUCT} in its BTF")
        members = {m.name: m for m in btf.members(struct_id)}
        fields = [_field(btf, members, name, source) for name in (*NEEDED_INTS, *NEEDED_BYTES)]
        enum_id = btf.find(PROBE_ENUM, btf_mod.BTF_KIND_ENUM)
        if enum_id is None:
            raise _mismatch(source, f"has no enum {PROBE_ENUM} in its BTF")
        probe_names = {value: name[len(PROBE_PREFIX):].lower()
                       for name, value in btf.enum_values(enum_id).items()}
        return cls(fields, btf.size(struct_id), probe_names, source)

    @classmethod
    def from_object(cls, path: Union[str, Path, None] = None) -> RecordLayout:
        """The layout in a built .o file, without a kernel (unit tests, the benchmark)."""
        path = str(path or default_object_path())
        btf = btf_mod.Btf.parse_elf(path)
        try:
            return cls.from_btf(btf, os.path.basename(path))
        finally:
            btf.close()



def _mismatch(source: str, what: str) -> TcpacceptError:
    return TcpacceptError(f"{source} {what}: it does not match this tcpaccept "
                          "(rebuild the BPF object or reinstall tcpaccept)")


def _field(btf: btf_mod.Btf, members: dict, name: str, source: str) -> Field:
    member = members.get(name)
    if member is None:
        raise _mismatch(source, f"has no field '{name}' in struct {RECORD_STRUCT}")
    where = f"field '{name}' of struct {RECORD_STRUCT}"
    if member.bitfield_bits:
        raise _mismatch(source, f"has {where} as a bitfield")
    type_id = btf.resolve(member.type_id)
    size = btf.size(type_id)
    kind = btf.kind(type_id)
    if name in NEEDED_BYTES:
        elem_id, length = btf.array(type_id) if kind == btf_mod.BTF_KIND_ARRAY else (0, 0)
        want = NEEDED_BYTES[name]
        if not length or btf.size(elem_id) != 1 or (want and size != want):
            raise _mismatch(source, f"has {where} of {size} bytes where this tcpaccept "
                            f"reads a byte array{f' of {want}' if want else ''}")
        return Field(name, member.offset, size, None, length)
    want_size, want_signed = NEEDED_INTS[name]
    signed = kind == btf_mod.BTF_KIND_INT and btf.int_signed(type_id)
    if kind not in (btf_mod.BTF_KIND_INT, btf_mod.BTF_KIND_ENUM) or size != want_size \
            or signed != want_signed:
        sign = "signed" if want_signed else "unsigned"
        raise _mismatch(source, f"has {where} of {size} bytes where this tcpaccept reads a "
                        f"{sign} {want_size}-byte integer")
    return Field(name, member.offset, size, signed, None)


class Decoder:
    """Turns raw records into model.Accept; caches the strings that repeat (addresses,
    comms). `layout` defaults to the packaged object's."""

    def __init__(self, layout: Optional[RecordLayout] = None, unmap_ipv4: bool = True,
                 boot_to_wall_ns: Optional[int] = None,
                 container_of: Optional[Callable[[int, int], Optional[Container]]] = None,
                 ) -> None:
        self.layout = layout or RecordLayout.from_object()
        # (cgroup_id, pid) -> Container: fills Accept.container; None leaves it None.
        self.container_of = container_of
        self.unmap_ipv4 = unmap_ipv4
        # bpf_ktime_get_ns() is the host's CLOCK_MONOTONIC: one offset converts it to wall
        # time (WallClock: right inside a time namespace too). Re-anchor by assigning it.
        self._scope: dict = {}
        self.boot_to_wall_ns = (
            boot_to_wall_ns if boot_to_wall_ns is not None else WallClock().offset_ns()
        )
        # Keyed by the raw 16 bytes, one dict per family (no key tuple per record).
        self._v4_cache: dict[bytes, str] = {}
        self._v6_cache: dict[bytes, tuple[int, str]] = {}
        self._comm_cache: dict[bytes, str] = {}
        self.decode: Callable[[bytes], Accept] = self._compile()

    @property
    def boot_to_wall_ns(self) -> int:
        return self._boot_to_wall_ns

    @boot_to_wall_ns.setter
    def boot_to_wall_ns(self, offset_ns: int) -> None:
        """A new offset (the wall clock was stepped): decode() reads it from its globals,
        so re-anchoring costs nothing per record."""
        self._boot_to_wall_ns = offset_ns
        self._scope["boot_to_wall_ns"] = offset_ns

    def address(self, family: int, raw: bytes) -> tuple[int, str]:
        """(shown family, printable address), IPv4-mapped IPv6 unmapped unless disabled."""
        if family == socket.AF_INET:
            return 4, self._v4_cache.get(raw) or self._v4_text(raw)
        return self._v6_cache.get(raw) or self._v6_text(raw)

    def _v4_text(self, raw: bytes) -> str:
        if len(self._v4_cache) >= _CACHE_LIMIT:  # bounded: a scan from many clients
            self._v4_cache.clear()  # clear(), not a new dict: decode() holds its .get
        text = self._v4_cache[raw] = socket.inet_ntop(socket.AF_INET, raw[:4])
        return text

    def _v6_text(self, raw: bytes) -> tuple[int, str]:
        if self.unmap_ipv4 and raw.startswith(_V4_MAPPED_PREFIX):
            shown = (4, socket.inet_ntop(socket.AF_INET, raw[12:]))
        else:
            shown = (6, socket.inet_ntop(socket.AF_INET6, raw))
        if len(self._v6_cache) >= _CACHE_LIMIT:
            self._v6_cache.clear()
        self._v6_cache[raw] = shown
        return shown

    def comm(self, raw: bytes) -> str:
        name = self._comm_cache.get(raw)
        if name is None:
            # Invalid UTF-8 survives as lone surrogates (U+DC80..U+DCFF): text output shows
            # the bytes as \xNN (output/escape.py), JSON as \udcNN (lossless in Python).
            name = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if len(self._comm_cache) >= _CACHE_LIMIT:
                self._comm_cache.clear()
            self._comm_cache[raw] = name
        return name

    def _compile(self) -> Callable[[bytes], Accept]:
        """decode(record) for this layout: one unpack straight into named locals.

        The unpacked order depends on the object, the Accept order does not; generating
        the function (as dataclasses and namedtuple do) binds them by name at no cost per
        record, where reordering a tuple at run time would cost ~10% of the decode rate.
        Only the fixed names of NEEDED_INTS/NEEDED_BYTES reach the source, never a string
        from the object."""
        unpacked = ", ".join(self.layout.names)
        container = "None" if self.container_of is None else "container_of(cgroup_id, pid)"
        source = (
            "def decode(record):\n"
            f"    ({unpacked},) = unpack_from(record)\n"
            # The caches are inlined: a hit costs one dict lookup, no call; `or` falls
            # through to the method on a miss (and for the empty comm, which is rare).
            "    if family == AF_INET:\n"
            "        shown_family = 4\n"
            "        raddr_text = v4_get(raddr) or v4_text(raddr)\n"
            "        laddr_text = v4_get(laddr) or v4_text(laddr)\n"
            "    else:\n"
            "        shown_family, raddr_text = v6_get(raddr) or v6_text(raddr)\n"
            "        laddr_text = (v6_get(laddr) or v6_text(laddr))[1]\n"
            # tuple.__new__ is what Accept(...) calls, minus a Python-level frame.
            "    return new(Accept, (ts_ns + boot_to_wall_ns, pid, tid, uid,\n"
            "                        comm_get(comm) or comm_text(comm), shown_family,\n"
            "                        raddr_text, rport, laddr_text, lport, backlog,\n"
            "                        backlog_max, fd, listen_fd, netns, cgroup_id,\n"
            "                        queue_latency_ns or None, probe_name(probe, 'unknown'),\n"
            f"                        {container}))\n"
        )
        scope = {
            "unpack_from": self.layout.struct.unpack_from, "AF_INET": socket.AF_INET,
            "v4_get": self._v4_cache.get, "v4_text": self._v4_text,
            "v6_get": self._v6_cache.get, "v6_text": self._v6_text,
            "comm_get": self._comm_cache.get, "comm_text": self.comm, "new": tuple.__new__,
            "Accept": Accept, "boot_to_wall_ns": self.boot_to_wall_ns,
            "probe_name": self.layout.probe_names.get, "container_of": self.container_of,
        }
        exec(compile(source, f"<decode {self.layout.source}>", "exec"), scope)  # noqa: S102
        self._scope = scope
        return scope["decode"]
