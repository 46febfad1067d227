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

    @classmethod
    def from_object(cls, path: Path) -> RecordLayout:
        btf = btf_mod.Btf.parse_elf(str(path))
        try:
            return cls(btf, path.name)
        finally:
            btf.close()

    def decode_all(self, raw: bytes) -> list[ListenerRecord]:
        """Every whole record of one iterator read."""
        usable = len(raw) - len(raw) % self.size
        return [self._record(dict(zip(self.names, values)))
                for values in self.struct.iter_unpack(raw[:usable])]

    def encode(self, **values: object) -> bytes:
        """A raw record as the kernel writes it (unit tests)."""
        values.setdefault("laddr", b"\0" * 16)
        values.setdefault("comm", b"")
        return self.struct.pack(*(values.get(name, 0) for name in self.names))

    @staticmethod
    def _record(v: dict) -> ListenerRecord:
        family = v["family"]
        if family == socket.AF_INET:
            laddr = socket.inet_ntop(family, v["laddr"][:4])
        else:
            laddr = socket.inet_ntop(socket.AF_INET6, v["laddr"])
        comm = v["comm"].split(b"\0", 1)[0].decode(errors="replace")
        return ListenerRecord(v["sock_inode"], v["netns"], v["pid"], v["backlog"],
                              v["backlog_max"], v["syn_queue"], v["drops"], family, v["lport"],
                              laddr, comm)
