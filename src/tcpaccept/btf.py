"""Read-only BTF (BPF Type Format) through libbpf: how user space learns the record
layout, the enums and the .rodata variables from the BPF object instead of copying them."""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from typing import Optional, Union

from .errors import TcpacceptError
from .libbpf import BpfObject, _check_ptr, _check_rc, lib

# enum btf_kind (include/uapi/linux/btf.h)
BTF_KIND_INT, BTF_KIND_ARRAY, BTF_KIND_STRUCT, BTF_KIND_ENUM = 1, 3, 4, 6
BTF_KIND_DATASEC = 15
BTF_INT_SIGNED = 1 << 0  # in the int encoding


@dataclass(frozen=True)
class BtfMember:
    name: str
    offset: int  # bytes from the start of the struct
    type_id: int
    bitfield_bits: int  # 0 unless a bitfield


class Btf:
    """Read-only view of BTF type information: a struct's members, an enum's values, a
    data section's variables. Reads the kernel's `struct btf_type` records directly (the
    layout is UAPI): a 12-byte header (name_off, info, size|type) then per-kind data."""

    def __init__(self, ptr: int, owned: bool) -> None:
        self._ptr: Optional[int] = ptr
        self._owned = owned  # an object's BTF belongs to the object, not to us

    @classmethod
    def of_object(cls, obj: BpfObject) -> Btf:
        """An opened object's own BTF (its records, enums, .rodata variables)."""
        return cls(_check_ptr(lib().bpf_object__btf(obj.ptr), f"BTF of {obj.path}"),
                   owned=False)

    @classmethod
    def parse_elf(cls, path: str) -> Btf:
        return cls(_check_ptr(lib().btf__parse_elf(path.encode(), None), f"read BTF of {path}"),
                   owned=True)

    def close(self) -> None:
        if self._ptr and self._owned:
            lib().btf__free(self._ptr)
        self._ptr = None

    def find(self, name: str, kind: int) -> Optional[int]:
        type_id = lib().btf__find_by_name_kind(self._ptr, name.encode(), kind)
        return type_id if type_id > 0 else None

    def _header(self, type_id: int) -> tuple[int, int, int, int]:
        """(address, kind, vlen, size_or_type) of a type."""
        addr = _check_ptr(lib().btf__type_by_id(self._ptr, type_id), f"BTF type {type_id}")
        _name_off, info, size_or_type = struct.unpack("<III", ctypes.string_at(addr, 12))
        return addr, (info >> 24) & 0x1F, info & 0xFFFF, size_or_type

    def kind(self, type_id: int) -> int:
        return self._header(type_id)[1]

    def _records(self, type_id: int, fmt: str) -> list[tuple]:
        addr, _kind, vlen, _ = self._header(type_id)
        size = struct.calcsize(fmt)
        raw = ctypes.string_at(addr + 12, vlen * size)
        return [struct.unpack_from(fmt, raw, i * size) for i in range(vlen)]

    def _name(self, offset: int) -> str:
        return (lib().btf__name_by_offset(self._ptr, offset) or b"").decode()

    def resolve(self, type_id: int) -> int:
        """The type behind typedefs and const/volatile qualifiers."""
        return _check_rc(lib().btf__resolve_type(self._ptr, type_id), f"resolve BTF {type_id}")

    def size(self, type_id: int) -> int:
        return _check_rc(lib().btf__resolve_size(self._ptr, type_id), f"size of BTF {type_id}")

    def members(self, struct_id: int) -> list[BtfMember]:
        kflag = struct.unpack("<I", ctypes.string_at(self._header(struct_id)[0] + 4, 4))[0] >> 31
        out = []
        for name_off, type_id, offset in self._records(struct_id, "<III"):
            # With kflag set, the top 8 bits hold a bitfield's width.
            bits, bit_offset = (offset >> 24, offset & 0xFFFFFF) if kflag else (0, offset)
            out.append(BtfMember(self._name(name_off), bit_offset // 8, type_id, bits))
        return out

    def enum_values(self, enum_id: int) -> dict[str, int]:
        return {self._name(name_off): value
                for name_off, value in self._records(enum_id, "<Ii")}

    def int_signed(self, int_id: int) -> bool:
        addr = self._header(int_id)[0]
        return bool((struct.unpack("<I", ctypes.string_at(addr + 12, 4))[0] >> 24)
                    & BTF_INT_SIGNED)

    def array(self, array_id: int) -> tuple[int, int]:
        """(element type id, number of elements)."""
        addr = self._header(array_id)[0]
        elem, _index, nelems = struct.unpack("<III", ctypes.string_at(addr + 12, 12))
        return elem, nelems

    def datasec_vars(self, section: str) -> dict[str, tuple[int, int]]:
        """{variable name: (offset, size)} of a data section such as .rodata (offsets are
        final only in an opened object's BTF: libbpf fills them in at open)."""
        sec_id = self.find(section, BTF_KIND_DATASEC)
        if sec_id is None:
            return {}
        out = {}
        for var_id, offset, size in self._records(sec_id, "<III"):
            name_off = struct.unpack("<I", ctypes.string_at(self._header(var_id)[0], 4))[0]
            out[self._name(name_off)] = (offset, size)
        return out


KERNEL_BTF = "/sys/kernel/btf/vmlinux"
_BTF_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type/str off+len


def _raw_kernel_btf(path: str) -> Optional[tuple[bytes, int, int, int, int]]:
    """(data, type section start, its end, string section start, its end). Not kept: a
    start asks one question, and the ~6 MB would stay in the tracer's memory."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        magic, _v, _f, hdr_len, type_off, type_len, str_off, str_len = \
            _BTF_HEADER.unpack_from(data)
    except (OSError, struct.error):
        return None
    if magic != 0xEB9F:
        return None
    return (data, hdr_len + type_off, hdr_len + type_off + type_len, hdr_len + str_off,
            hdr_len + str_off + str_len)


def kernel_btf_has_name(name: str, path: str = KERNEL_BTF) -> bool:
    """Whether the kernel's BTF string table holds `name` (a kfunc's, for instance).

    Scans the raw strings (~8 ms here) instead of parsing the whole BTF with libbpf
    (~33 ms, and tcpaccept starts within 0.2 s). A name is not proof of a usable function:
    callers load the program and fall back if the verifier refuses it."""
    raw = _raw_kernel_btf(path)
    if raw is None:
        return False
    data, _ts, _te, str_start, str_end = raw
    return data.find(b"\0" + name.encode() + b"\0", str_start, str_end) >= 0


def kernel_btf_has_struct(name: str, path: str = KERNEL_BTF) -> bool:
    """Whether the kernel's BTF defines `struct name`, without parsing it with libbpf.

    A struct's `btf_type` starts with name_off (the name's offset in the string table) and
    info (kind in bits 24-28): search the type section for those 8 bytes at a 4-byte
    boundary. Any other record that holds the same name_off (a member or parameter of that
    name) is followed by a type id or offset, which never carries kind bits 24-28 = STRUCT
    on a kernel with fewer than 16M types. Same answers as libbpf's btf__find_by_name_kind
    (tests/kernel/test_kernel_btf.py), for one read of the file instead of a full parse."""
    raw = _raw_kernel_btf(path)
    if raw is None:
        return False
    data, type_start, type_end, str_start, str_end = raw
    needle = b"\0" + name.encode() + b"\0"
    at = data.find(needle, str_start, str_end)
    while at >= 0:  # the name may be there more than once (dedup is not guaranteed)
        name_off = struct.pack("<I", at + 1 - str_start)
        hit = data.find(name_off, type_start, type_end)
        while hit >= 0:
            if (hit - type_start) % 4 == 0 and hit + 8 <= type_end:
                info = int.from_bytes(data[hit + 4:hit + 8], "little")
                if (info >> 24) & 0x1F == BTF_KIND_STRUCT:
                    return True
            hit = data.find(name_off, hit + 1, type_end)
        at = data.find(needle, at + 1, str_end)
    return False


def kernel_has_struct(name: str) -> bool:
    """Whether the running kernel's BTF defines `struct name`, through libbpf's full parse
    (the start asks kernel_btf_has_struct; this is its reference in the tests)."""
    btf = _check_ptr(lib().btf__load_vmlinux_btf(), "load kernel BTF")
    try:
        return lib().btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT) > 0
    finally:
        lib().btf__free(btf)


class DataSection:
    """Named `const volatile` globals of an opened, not yet loaded, object (libbpf-tools'
    `rodata->target_uid = 33`), written through the section's BTF variable offsets."""

    def __init__(self, obj: BpfObject, btf: Btf, section: str = ".rodata") -> None:
        self.source = f"{os.path.basename(obj.path)} {section}"
        self._vars = btf.datasec_vars(section)
        self._data = obj.map(section).initial_value() if self._vars else None

    def set(self, name: str, value: Union[bool, int, bytes], size: Optional[int] = None) -> None:
        """Set variable `name`. The size this side means: 1 for a bool, 4 for an int unless
        given, len() for bytes; a missing variable or another size fails loudly, since the
        program would otherwise run with a setting silently dropped or cut."""
        if isinstance(value, bool):
            raw = bytes([value])
        elif isinstance(value, int):
            try:
                raw = value.to_bytes(size or 4, "little", signed=value < 0)
            except OverflowError:
                raise TcpacceptError(f"{self.source} variable '{name}': {value} does not "
                                     f"fit in {size or 4} bytes") from None
        else:
            raw = value
        where = self._vars.get(name)
        if where is None or self._data is None:
            raise TcpacceptError(f"{self.source} has no variable '{name}': the BPF object "
                                 "does not match this tcpaccept (rebuild it)")
        offset, var_size = where
        if var_size != len(raw):
            raise TcpacceptError(f"{self.source} variable '{name}' is {var_size} bytes, this "
                                 f"tcpaccept writes {len(raw)}: the BPF object does not match "
                                 "(rebuild it)")
        ctypes.memmove(ctypes.addressof(self._data) + offset, raw, len(raw))
