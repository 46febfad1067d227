"""A thin ctypes binding over the system libbpf.so.1 (stable 1.x API).

Each kernel object has an owner with a close(): BpfObject owns its programs and maps,
Link owns an attachment (ring_buffer.py owns the ring readers). Errors become LibbpfError
with the object, the step and libbpf's own message.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Callable, Iterator, Optional

LIBBPF_SONAME = "libbpf.so.1"

# enum libbpf_print_level
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
# enum bpf_prog_type
BPF_PROG_TYPE_TRACEPOINT = 5


class LibbpfError(Exception):
    """A libbpf call failed; str() is one line naming the step and the reason."""

    def __init__(self, step: str, err: int) -> None:
        self.step = step
        self.errno = abs(err)
        super().__init__(f"{step}: {strerror(err)}")


class LibbpfMissing(Exception):
    pass


_lib: Optional[ctypes.CDLL] = None
_libc = ctypes.CDLL(None, use_errno=True)

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
RING_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

_c = ctypes
# name: (restype, argtypes)
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "libbpf_major_version": (_c.c_uint32, []),
    "libbpf_minor_version": (_c.c_uint32, []),
    "libbpf_strerror": (_c.c_int, [_c.c_int, _c.c_char_p, _c.c_size_t]),
    "libbpf_set_print": (_c.c_void_p, [_PRINT_FN]),
    "libbpf_probe_bpf_helper": (_c.c_int, [_c.c_int, _c.c_int, _c.c_void_p]),
    "libbpf_num_possible_cpus": (_c.c_int, []),
    "bpf_object__open_file": (_c.c_void_p, [_c.c_char_p, _c.c_void_p]),
    "bpf_object__load": (_c.c_int, [_c.c_void_p]),
    "bpf_object__close": (None, [_c.c_void_p]),
    "bpf_object__find_program_by_name": (_c.c_void_p, [_c.c_void_p, _c.c_char_p]),
    "bpf_object__find_map_by_name": (_c.c_void_p, [_c.c_void_p, _c.c_char_p]),
    "bpf_object__next_program": (_c.c_void_p, [_c.c_void_p, _c.c_void_p]),
    "bpf_program__name": (_c.c_char_p, [_c.c_void_p]),
    "bpf_program__set_autoload": (_c.c_int, [_c.c_void_p, _c.c_bool]),
    "bpf_program__autoload": (_c.c_bool, [_c.c_void_p]),
    "bpf_program__attach": (_c.c_void_p, [_c.c_void_p]),
    "bpf_program__attach_tracepoint": (_c.c_void_p, [_c.c_void_p, _c.c_char_p, _c.c_char_p]),
    "bpf_link__destroy": (_c.c_int, [_c.c_void_p]),
    "bpf_link__fd": (_c.c_int, [_c.c_void_p]),
    "bpf_obj_get_info_by_fd": (_c.c_int, [_c.c_int, _c.c_void_p, _c.POINTER(_c.c_uint32)]),
    "bpf_map__fd": (_c.c_int, [_c.c_void_p]),
    "bpf_map__reuse_fd": (_c.c_int, [_c.c_void_p, _c.c_int]),
    "bpf_map__set_max_entries": (_c.c_int, [_c.c_void_p, _c.c_uint32]),
    "bpf_map__initial_value": (_c.c_void_p, [_c.c_void_p, _c.POINTER(_c.c_size_t)]),
    "bpf_map__value_size": (_c.c_uint32, [_c.c_void_p]),
    "bpf_map__key_size": (_c.c_uint32, [_c.c_void_p]),
    "bpf_map_get_next_key": (_c.c_int, [_c.c_int, _c.c_void_p, _c.c_void_p]),
    "bpf_map_update_elem": (_c.c_int, [_c.c_int, _c.c_void_p, _c.c_void_p, _c.c_uint64]),
    "bpf_map_lookup_elem": (_c.c_int, [_c.c_int, _c.c_void_p, _c.c_void_p]),
    "bpf_map_delete_elem": (_c.c_int, [_c.c_int, _c.c_void_p]),
    "bpf_obj_get": (_c.c_int, [_c.c_char_p]),
    "btf__load_vmlinux_btf": (_c.c_void_p, []),
    "btf__find_by_name_kind": (_c.c_int, [_c.c_void_p, _c.c_char_p, _c.c_uint32]),
    "btf__free": (None, [_c.c_void_p]),
    "btf__parse_elf": (_c.c_void_p, [_c.c_char_p, _c.c_void_p]),
    "btf__type_by_id": (_c.c_void_p, [_c.c_void_p, _c.c_uint32]),
    "btf__name_by_offset": (_c.c_char_p, [_c.c_void_p, _c.c_uint32]),
    "btf__resolve_type": (_c.c_int, [_c.c_void_p, _c.c_uint32]),
    "btf__resolve_size": (_c.c_long, [_c.c_void_p, _c.c_uint32]),
    "bpf_object__btf": (_c.c_void_p, [_c.c_void_p]),
    "bpf_map__max_entries": (_c.c_uint32, [_c.c_void_p]),
    "ring_buffer__new": (_c.c_void_p, [_c.c_int, RING_SAMPLE_FN, _c.c_void_p, _c.c_void_p]),
    "ring_buffer__epoll_fd": (_c.c_int, [_c.c_void_p]),
    "ring_buffer__free": (None, [_c.c_void_p]),
    "bpf_program__attach_iter": (_c.c_void_p, [_c.c_void_p, _c.c_void_p]),
    "bpf_iter_create": (_c.c_int, [_c.c_int]),
    "bpf_prog_load": (_c.c_int, [_c.c_int, _c.c_char_p, _c.c_char_p, _c.c_void_p, _c.c_size_t,
                                 _c.c_void_p]),
}


def lib() -> ctypes.CDLL:
    """The loaded libbpf, typed; raises LibbpfMissing naming the Debian package."""
    global _lib
    if _lib is None:
        try:
            loaded = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
        except OSError as exc:
            raise LibbpfMissing(
                f"{LIBBPF_SONAME} not found ({exc}): install the libbpf1 package "
                "(apt-get install libbpf1)"
            ) from None
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(loaded, name)
            fn.restype = restype
            fn.argtypes = argtypes
        _lib = loaded
    return _lib


def version() -> str:
    return f"{lib().libbpf_major_version()}.{lib().libbpf_minor_version()}"


def strerror(err: int) -> str:
    """libbpf's message for codes >= 4000 (its own), the C library's for the rest."""
    err = abs(err)
    if err >= 4000:
        buf = ctypes.create_string_buffer(128)
        lib().libbpf_strerror(err, buf, len(buf))
        return buf.value.decode(errors="replace")
    return os.strerror(err)


def _check_ptr(ptr: Optional[int], step: str) -> int:
    """libbpf 1.x returns NULL and sets errno on failure."""
    if not ptr:
        raise LibbpfError(step, ctypes.get_errno() or errno.EINVAL)
    return ptr


def _check_rc(rc: int, step: str) -> int:
    if rc < 0:
        raise LibbpfError(step, rc)
    return rc


# Kept alive for as long as libbpf may call it.
_print_callback: Optional[object] = None
_vsnprintf = _libc.vsnprintf
_vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


def set_print(sink: Optional[Callable[[int, str], None]], max_level: int = LIBBPF_INFO) -> None:
    """Route libbpf's log up to max_level to sink(level, line); None silences it."""
    global _print_callback

    def forward(level: int, fmt: bytes, args: int) -> int:
        if sink is not None and level <= max_level:
            buf = ctypes.create_string_buffer(1 << 20)  # verifier logs are long
            # va_list is passed by pointer on x86-64 and arm64: vsnprintf can consume it.
            _vsnprintf(buf, len(buf), fmt, args)
            sink(level, buf.value.decode(errors="replace").rstrip("\n"))
        return 0

    _print_callback = _PRINT_FN(forward)
    lib().libbpf_set_print(_print_callback)


def probe_helper(prog_type: int, helper_id: int) -> bool:
    """Whether the kernel lets prog_type call helper_id (libbpf loads a tiny program)."""
    return lib().libbpf_probe_bpf_helper(prog_type, helper_id, None) == 1


def possible_cpus() -> int:
    """Per-CPU map values have one slot per possible CPU (not just online ones)."""
    return _check_rc(lib().libbpf_num_possible_cpus(), "count the possible CPUs")


def pinned_fd(path: str) -> int:
    fd = lib().bpf_obj_get(path.encode())
    if fd < 0:
        raise LibbpfError(f"open pinned map {path}", ctypes.get_errno() or -fd)
    return fd


class Map:
    def __init__(self, ptr: int, name: str) -> None:
        self._ptr = ptr
        self.name = name

    @property
    def fd(self) -> int:
        return lib().bpf_map__fd(self._ptr)

    @property
    def max_entries(self) -> int:
        return lib().bpf_map__max_entries(self._ptr)

    def set_max_entries(self, entries: int) -> None:
        _check_rc(lib().bpf_map__set_max_entries(self._ptr, entries), f"resize map {self.name}")

    def reuse_fd(self, fd: int) -> None:
        _check_rc(lib().bpf_map__reuse_fd(self._ptr, fd), f"reuse pinned map for {self.name}")

    def initial_value(self) -> ctypes.Array:
        """The map's writable initial data (.rodata/.data), only before load."""
        size = ctypes.c_size_t()
        ptr = _check_ptr(lib().bpf_map__initial_value(self._ptr, ctypes.byref(size)),
                         f"initial value of {self.name}")
        return (ctypes.c_char * size.value).from_address(ptr)

    def update(self, key: bytes, value: bytes) -> None:
        rc = lib().bpf_map_update_elem(self.fd, key, value, 0)
        if rc < 0:
            raise LibbpfError(f"update map {self.name}", ctypes.get_errno() or -rc)

    def delete(self, key: bytes) -> None:
        """Remove key; a key that is not there is not an error."""
        if lib().bpf_map_delete_elem(self.fd, key) < 0 and ctypes.get_errno() != errno.ENOENT:
            raise LibbpfError(f"delete from map {self.name}", ctypes.get_errno())

    def lookup(self, key: bytes, value_size: int) -> Optional[bytes]:
        value = ctypes.create_string_buffer(value_size)
        if lib().bpf_map_lookup_elem(self.fd, key, value) < 0:
            return None
        return value.raw

    def lookup_per_cpu(self, key: bytes, ncpus: int) -> Optional[list[bytes]]:
        """A per-CPU map's value, one bytes per possible CPU (each padded to 8 by the
        kernel); None if the key is gone."""
        size = lib().bpf_map__value_size(self._ptr)
        raw = self.lookup(key, (stride := (size + 7) & ~7) * ncpus)
        return None if raw is None else [raw[i:i + size] for i in range(0, len(raw), stride)]

    def iter_keys(self) -> Iterator[bytes]:
        """Every key present now; a key deleted under us restarts the kernel's walk from
        the first key, so a key seen twice ends it (and max_entries bounds it)."""
        size, seen = lib().bpf_map__key_size(self._ptr), set()
        prev, key = None, ctypes.create_string_buffer(size)
        while (lib().bpf_map_get_next_key(self.fd, prev, key) == 0 and key.raw not in seen
               and len(seen) < self.max_entries):
            seen.add(key.raw)
            yield key.raw
            prev = ctypes.create_string_buffer(key.raw, size)


class Program:
    def __init__(self, ptr: int, name: str) -> None:
        self._ptr = ptr
        self.name = name

    @property
    def autoload(self) -> bool:
        return bool(lib().bpf_program__autoload(self._ptr))

    @autoload.setter
    def autoload(self, value: bool) -> None:
        _check_rc(lib().bpf_program__set_autoload(self._ptr, value), f"autoload {self.name}")

    def attach(self) -> Link:
        ptr = _check_ptr(lib().bpf_program__attach(self._ptr), f"attach {self.name}")
        return Link(ptr, self.name)

    def attach_tracepoint(self, category: str, name: str) -> Link:
        """A further attachment to another tracepoint with the same record layout."""
        ptr = _check_ptr(lib().bpf_program__attach_tracepoint(
            self._ptr, category.encode(), name.encode()), f"attach {self.name} to {name}")
        return Link(ptr, self.name)

    def attach_iter(self) -> Link:
        """An iterator's link (no options); each Link.read_iterator() is one walk."""
        ptr = _check_ptr(lib().bpf_program__attach_iter(self._ptr, None), f"attach {self.name}")
        return Link(ptr, self.name)


# struct bpf_link_info (UAPI): type, id, prog_id, then a union aligned to 8 bytes. For a
# perf-event link: the event type at 16, then kprobe {func_name u64, name_len u32, offset
# u32, addr u64, missed u64}: missed at 48 (6.7+; earlier kernels leave it 0).
BPF_LINK_TYPE_PERF_EVENT = 7
BPF_PERF_EVENT_KPROBE, BPF_PERF_EVENT_KRETPROBE = 3, 4
_LINK_INFO_BYTES = 256  # more than any kernel's struct; the kernel wants the tail zero


class Link:
    def __init__(self, ptr: int, name: str) -> None:
        self._ptr: Optional[int] = ptr
        self.name = name

    def kprobe_missed(self) -> int:
        """Times the kernel skipped this kprobe/kretprobe link's program: a kprobe hit
        inside another, or (kretprobe) more calls in flight than its maxactive."""
        if not self._ptr:
            raise LibbpfError(f"link info of {self.name}", errno.EBADF)
        info = ctypes.create_string_buffer(_LINK_INFO_BYTES)
        size = ctypes.c_uint32(_LINK_INFO_BYTES)
        fd = lib().bpf_link__fd(self._ptr)
        rc = lib().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size))
        if rc < 0:
            raise LibbpfError(f"link info of {self.name}", ctypes.get_errno() or -rc)
        missed = kprobe_missed_of(info.raw)
        if missed is None:
            raise LibbpfError(f"link info of {self.name}: not a kprobe link", errno.EINVAL)
        return missed

    def close(self) -> None:
        if self._ptr:
            lib().bpf_link__destroy(self._ptr)
            self._ptr = None

    def open_iterator(self) -> int:
        """A fresh fd of an iterator link (the caller reads it to its end, then closes it):
        in-process, as a bpffs pin needs more than CAP_BPF."""
        fd = lib().bpf_iter_create(lib().bpf_link__fd(self._ptr)) if self._ptr else -errno.EBADF
        return _check_rc(fd, f"create iterator {self.name}")  # libbpf 1.x: -errno


def kprobe_missed_of(link_info: bytes) -> Optional[int]:
    """kprobe.missed of a struct bpf_link_info; None unless it is a kprobe perf link."""
    link_type, event_type = (int.from_bytes(link_info[at:at + 4], "little") for at in (0, 16))
    if link_type != BPF_LINK_TYPE_PERF_EVENT or event_type not in (
            BPF_PERF_EVENT_KPROBE, BPF_PERF_EVENT_KRETPROBE):
        return None
    return int.from_bytes(link_info[48:56], "little")


VMLINUX_BTF = "/sys/kernel/btf/vmlinux"


class _OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts as of libbpf 1.0/1.1 (sz tells newer libbpf the size)."""

    _fields_ = [("sz", ctypes.c_size_t), ("object_name", ctypes.c_char_p),
                ("relaxed_maps", ctypes.c_bool), ("pin_root_path", ctypes.c_char_p),
                ("_unused", ctypes.c_uint32), ("kconfig", ctypes.c_char_p),
                ("btf_custom_path", ctypes.c_char_p), ("kernel_log_buf", ctypes.c_char_p),
                ("kernel_log_size", ctypes.c_size_t), ("kernel_log_level", ctypes.c_uint32)]


class BpfObject:
    """An opened (then loaded) BPF ELF object; close() frees programs, maps and links."""

    def __init__(self, path: str) -> None:
        self.path = path
        # vmlinux BTF named explicitly: a CO-RE relocation against a type this kernel lacks
        # then fails alone, instead of libbpf 1.1 walking module BTFs, which needs
        # CAP_SYS_ADMIN (BPF_BTF_GET_NEXT_ID) and fails the whole load with only
        # CAP_BPF + CAP_PERFMON (the DaemonSet's capabilities).
        opts = _OpenOpts(sz=ctypes.sizeof(_OpenOpts))
        if os.path.exists(VMLINUX_BTF):
            opts.btf_custom_path = VMLINUX_BTF.encode()
        self._ptr: Optional[int] = _check_ptr(
            lib().bpf_object__open_file(path.encode(), ctypes.byref(opts)), f"open {path}"
        )

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def ptr(self) -> int:
        if not self._ptr:
            raise ValueError("BPF object is closed")
        return self._ptr

    def programs(self) -> Iterator[Program]:
        prog = lib().bpf_object__next_program(self.ptr, None)
        while prog:
            yield Program(prog, lib().bpf_program__name(prog).decode())
            prog = lib().bpf_object__next_program(self.ptr, prog)

    def program(self, name: str) -> Program:
        ptr = _check_ptr(lib().bpf_object__find_program_by_name(self.ptr, name.encode()),
                         f"find program {name}")
        return Program(ptr, name)

    def map(self, name: str) -> Map:
        ptr = _check_ptr(lib().bpf_object__find_map_by_name(self.ptr, name.encode()),
                         f"find map {name}")
        return Map(ptr, name)

    def load(self) -> None:
        _check_rc(lib().bpf_object__load(self.ptr), f"load {os.path.basename(self.path)}")

    def close(self) -> None:
        if self._ptr:
            lib().bpf_object__close(self._ptr)
            self._ptr = None
