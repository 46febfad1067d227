"""Any struct of the BPF object, read from its BTF by name: members decoded into a dict by
name, encoded from names. Nothing about a struct is written down in Python: offsets, sizes,
signedness and array lengths come from the object, so a reordered or resized member is
read right or refused with one line naming it, never misread.

Members: integers and enums (by size and sign), arrays of integers (a tuple), byte arrays
and nested structs (bytes; decode those with their own layout).
"""

from __future__ import annotations

import struct
from typing import Any

from . import btf as btf_mod
from .errors import TcpacceptError

_INT_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}
BTF_KIND_UNION = 5


class StructLayout:
    """One struct as one object built it."""

    def __init__(self, name: str, size: int, members: list[tuple[str, int, str, int]],
                 source: str) -> None:
        self.name = name
        self.size = size
        self.source = source
        # (member, offset, struct code, values it unpacks to: 0 for one scalar)
        self.members = sorted(members, key=lambda m: m[1])
        fmt, pos = ["<"], 0
        for _name, offset, code, _count in self.members:
            if offset > pos:
                fmt.append(f"{offset - pos}x")
            fmt.append(code)
            pos = offset + struct.calcsize("<" + code)
        if size > pos:
            fmt.append(f"{size - pos}x")
        self.struct = struct.Struct("".join(fmt))
        self.sizes = {m[0]: struct.calcsize("<" + m[2]) for m in self.members}

    @classmethod
    def of(cls, btf: btf_mod.Btf, name: str, source: str) -> StructLayout:
        struct_id = btf.find(name, btf_mod.BTF_KIND_STRUCT)
        if struct_id is None:
            raise _mismatch(source, f"has no struct {name} in its BTF")
        members = []
        for member in btf.members(struct_id):
            if member.bitfield_bits:
                continue  # none are read; their bytes are skipped as padding
            members.append((member.name, member.offset,
                            *_code(btf, member.type_id, f"{name}.{member.name}", source)))
        return cls(name, btf.size(struct_id), members, source)

    def require(self, **sizes: int) -> StructLayout:
        """Each named member present with this size in bytes (0: any size)."""
        for member, size in sizes.items():
            found = self.sizes.get(member)
            if found is None or (size and found != size):
                have = "missing" if found is None else f"{found} bytes"
                raise _mismatch(self.source, f"struct {self.name} member {member} is {have}, "
                                             f"this tcpaccept reads {size or 'some'} bytes")
        return self

    def decode(self, raw: bytes) -> dict[str, Any]:
        values = self.struct.unpack(raw)
        out, i = {}, 0
        for name, _offset, _code, count in self.members:
            if count:
                out[name] = values[i:i + count]
                i += count
            else:
                out[name] = values[i]
                i += 1
        return out

    def encode(self, **values: Any) -> bytes:
        """Missing members are 0 (empty bytes); for tests, benchmarks and map keys."""
        flat: list[Any] = []
        for name, _offset, code, count in self.members:
            value = values.get(name)
            if count:
                flat.extend(value if value is not None else (0,) * count)
            else:
                flat.append(value if value is not None else (b"" if code.endswith("s") else 0))
        return self.struct.pack(*flat)


def _code(btf: btf_mod.Btf, type_id: int, where: str, source: str) -> tuple[str, int]:
    """(struct code, values it unpacks to) of a member's type."""
    type_id = btf.resolve(type_id)
    kind, size = btf.kind(type_id), btf.size(type_id)
    if kind == btf_mod.BTF_KIND_INT and size in _INT_CODES:
        code = _INT_CODES[size]
        return (code if btf.int_signed(type_id) else code.upper()), 0
    if kind == btf_mod.BTF_KIND_ENUM and size in _INT_CODES:
        return _INT_CODES[size].upper(), 0
    if kind == btf_mod.BTF_KIND_ARRAY:
        elem, count = btf.array(type_id)
        elem = btf.resolve(elem)
        elem_size = btf.size(elem)
        if btf.kind(elem) == btf_mod.BTF_KIND_INT and elem_size > 1 and elem_size in _INT_CODES:
            code = _INT_CODES[elem_size]
            return f"{count}{code if btf.int_signed(elem) else code.upper()}", count
        return f"{size}s", 0  # char/u8 arrays, arrays of structs: bytes
    if kind in (btf_mod.BTF_KIND_STRUCT, BTF_KIND_UNION):
        return f"{size}s", 0
    raise _mismatch(source, f"member {where} has a type this tcpaccept cannot read "
                            f"(BTF kind {kind})")


def _mismatch(source: str, what: str) -> TcpacceptError:
    return TcpacceptError(f"BPF object {source} {what}: it does not match this tcpaccept "
                          "(rebuild it)")
