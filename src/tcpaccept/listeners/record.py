"""`struct listener_record` (bpf/listeners.h) as the object's BTF lays it out, decoded by name.

No offsets are written down here: the members the decoder needs are looked up by name with
their sizes and signedness checked, so a reordered header still decodes right and a changed
one stops the load with one line naming the field.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from .. import btf as btf_mod
from ..errors import TcpacceptError

RECORD_STRUCT = "listener_record"
PACKAGED_OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "listeners.bpf.o"
OBJECT_ENV = "TCPACCEPT_LISTENERS_OBJECT"  # another build of the object (development)

# name: size in bytes (unsigned integers); byte arrays: their length (0: any).
NEEDED_INTS = {"sock_inode": 8, "netns": 4, "pid": 4, "backlog": 4, "backlog_max": 4,
               "syn_queue": 4, "drops": 4, "family": 2, "lport": 2}
NEEDED_BYTES = {"laddr": 16, "comm": 0}
_INT_CODES = {2: "H", 4: "I", 8: "Q"}
# ListenerRecord's fields, in its order.
_RECORD_ORDER = ("sock_inode", "netns", "pid", "backlog", "backlog_max", "syn_queue", "drops",
                 "family", "lport", "laddr", "comm")


def object_path() -> Path:
    return Path(os.environ.get(OBJECT_ENV) or PACKAGED_OBJECT)


@dataclass(frozen=True)
class ListenerRecord:
    """One (process, listening socket) pair as the iterator saw it."""

    sock_inode: int
    netns: int
    pid: int
    backlog: int
    backlog_max: int
    syn_queue: int
    drops: int  # the kernel's wrapping 32-bit counter
    family: int
    lport: int
    laddr: str
    comm: str


class RecordLayout:
    """One struct.Struct over the needed members in offset order, the rest skipped."""

    def __init__(self, btf: btf_mod.Btf, source: str) -> None:
        struct_id = btf.find(RECORD_STRUCT, btf_mod.BTF_KIND_STRUCT)
        if struct_id is None:
            raise TcpacceptError(f"{source} has no struct {RECORD_STRUCT}: rebuild it")
        members = {m.name: m for m in btf.members(struct_id)}
        fields: list[tuple[int, str, str, int]] = []  # (offset, name, code, size)
        for name in (*NEEDED_INTS, *NEEDED_BYTES):
            member = members.get(name)
            if member is None:
                raise TcpacceptError(f"{source}: struct {RECORD_STRUCT} has no member {name}")
            size = btf.size(member.type_id)
            want = NEEDED_INTS.get(name) or NEEDED_BYTES[name]
            if want and size != want:
                raise TcpacceptError(f"{source}: {RECORD_STRUCT}.{name} is {size} bytes, "
                                     f"this tcpaccept reads {want}: rebuild the object")
            code = _INT_CODES[size] if name in NEEDED_INTS else f"{size}s"
            fields.append((member.offset, name, code, size))
        fields.sort()
        fmt, pos = ["<"], 0
        for offset, _name, code, size in fields:
            if offset > pos:
                fmt.append(f"{offset - pos}x")
            fmt.append(code)
            pos = offset + size
        self.size = btf.size(struct_id)
        if self.size > pos:
            fmt.append(f"{self.size - pos}x")
        self.struct = struct.Struct("".join(fmt))
        self.names = tuple(name for _o, name, _c, _s in fields)
        self._order = [self.names.index(name) for name in _RECORD_ORDER]
        # Raw record -> its decoding, from the previous read: most listeners do not change
        # between reads, and decoding (addresses, comm) is most of a read's cost in Python.
        self._seen: dict[bytes, ListenerRecord] = {}

    @classmethod
    def from_object(cls, path: Path) -> RecordLayout:
        btf = btf_mod.Btf.parse_elf(str(path))
        try:
            return cls(btf, path.name)
        finally:
            btf.close()

    def decode_all(self, raw: bytes) -> list[ListenerRecord]:
        """Every whole record of one iterator read. An unchanged record is the same
        ListenerRecord object as in the previous read (ListenerTable relies on it)."""
        size, seen = self.size, self._seen
        fresh: dict[bytes, ListenerRecord] = {}
        records = []
        for offset in range(0, len(raw) - size + 1, size):
            chunk = raw[offset:offset + size]
            record = seen.get(chunk) or fresh.get(chunk)
            if record is None:
                record = self._record(self.struct.unpack(chunk))
            fresh[chunk] = record
            if record.sock_inode:  # 0: a tick, written only to end the read() early
                records.append(record)
        self._seen = fresh
        return records

    def encode(self, **values: object) -> bytes:
        """A raw record as the kernel writes it (unit tests)."""
        values.setdefault("laddr", b"\0" * 16)
        values.setdefault("comm", b"")
        return self.struct.pack(*(values.get(name, 0) for name in self.names))

    def _record(self, values: tuple) -> ListenerRecord:
        fields = [values[i] for i in self._order]
        family, raw_addr, comm = fields[7], fields[9], fields[10]
        if family == socket.AF_INET:
            fields[9] = socket.inet_ntop(family, raw_addr[:4])
        else:
            fields[9] = socket.inet_ntop(socket.AF_INET6, raw_addr)
        fields[10] = comm.split(b"\0", 1)[0].decode(errors="replace")
        return ListenerRecord(*fields)
