"""`struct listener_record` (bpf/listeners.h) as the object's BTF lays it out, decoded by name.

The layout is layout.StructLayout, the one by-name reader of the object's structs: no
offsets are written down here, the members ListenerRecord needs are checked for presence
and size, so a reordered header still decodes right and a changed one stops the load with
one line naming the member.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, fields
from pathlib import Path

from .. import btf as btf_mod
from ..layout import StructLayout

RECORD_STRUCT = "listener_record"
PACKAGED_OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "listeners.bpf.o"
OBJECT_ENV = "TCPACCEPT_LISTENERS_OBJECT"  # another build of the object (development)

# member: its size in bytes (0: any; comm's length is the kernel's TASK_COMM_LEN choice).
NEEDED = {"sock_inode": 8, "netns": 4, "pid": 4, "backlog": 4, "backlog_max": 4,
          "syn_queue": 4, "drops": 4, "family": 2, "lport": 2, "laddr": 16, "comm": 0}


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


_RECORD_FIELDS = tuple(f.name for f in fields(ListenerRecord))
_FAMILY, _LADDR, _COMM = (_RECORD_FIELDS.index(name) for name in ("family", "laddr", "comm"))


class RecordLayout:
    """The record's StructLayout, plus last read's decodings keyed by raw record."""

    def __init__(self, btf: btf_mod.Btf, source: str) -> None:
        self.struct_layout = StructLayout.of(btf, RECORD_STRUCT, source).require(**NEEDED)
        self.size = self.struct_layout.size
        # Where each ListenerRecord field lands in the unpacked tuple (an int array takes count).
        slots, i = {}, 0
        for name, _offset, _code, count in self.struct_layout.members:
            slots[name] = i
            i += count or 1
        self._order = [slots[name] for name in _RECORD_FIELDS]
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
                record = self._record(chunk)
            fresh[chunk] = record
            if record.sock_inode:  # 0: a tick, written only to end the read() early
                records.append(record)
        self._seen = fresh
        return records

    def _record(self, chunk: bytes) -> ListenerRecord:
        unpacked = self.struct_layout.struct.unpack(chunk)
        values = [unpacked[i] for i in self._order]  # ListenerRecord's field order
        family, raw_addr, comm = values[_FAMILY], values[_LADDR], values[_COMM]
        if family == socket.AF_INET:
            values[_LADDR] = socket.inet_ntop(family, raw_addr[:4])
        else:
            values[_LADDR] = socket.inet_ntop(socket.AF_INET6, raw_addr)
        values[_COMM] = comm.split(b"\0", 1)[0].decode(errors="replace")
        return ListenerRecord(*values)
