"""open -> configure -> load -> attach -> poll: the BPF side's whole lifetime in one place."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path
from typing import Callable, Optional

from . import libbpf, probes
from .config import Config, IPNetwork
from .errors import TcpacceptError

_libc = ctypes.CDLL(None)
BPF_OBJECT = Path(__file__).with_name("bpf") / "tcpaccept.bpf.o"

# enum filter_flag in bpf/tcpaccept.h
FILTER_PID = 1 << 0
FILTER_LPORT = 1 << 1
FILTER_UID = 1 << 2
FILTER_COMM = 1 << 3
FILTER_NETNS = 1 << 4
FILTER_CGROUP = 1 << 5
FILTER_CGROUPMAP = 1 << 6
FILTER_MNTNSMAP = 1 << 7
FILTER_REMOTE = 1 << 8
FILTER_FAMILY = 1 << 9
SAVED_REGS = 1 << 10
QUEUE_LATENCY = 1 << 11

# struct tcpaccept_config: flags, uid, netns, family, comm[16], wakeup_batch
CONFIG_RECORD = struct.Struct("<IIII16sI")
# A ring slot: the 8-byte record header plus the event.
RING_SLOT_BYTES = 8 + 112
MAX_WAKEUP_BATCH = 1024


def config_record(config: Config, saved_regs: bool) -> bytes:
    flags = SAVED_REGS if saved_regs else 0
    flags |= FILTER_PID if config.pids else 0
    flags |= FILTER_LPORT if config.lports else 0
    flags |= FILTER_UID if config.uid is not None else 0
    flags |= FILTER_COMM if config.comm is not None else 0
    flags |= FILTER_NETNS if config.netns is not None else 0
    flags |= FILTER_CGROUP if config.cgroup else 0
    flags |= FILTER_CGROUPMAP if config.cgroupmap else 0
    flags |= FILTER_MNTNSMAP if config.mntnsmap else 0
    flags |= FILTER_REMOTE if config.remotes else 0
    flags |= FILTER_FAMILY if config.family else 0
    flags |= QUEUE_LATENCY if config.queue_latency else 0
    comm = (config.comm or "").encode()[:15]
    # Wake user space when an eighth of the ring has filled on one CPU (it polls every
    # 50 ms anyway), so even a small ring has room to spare when the reader wakes.
    wakeup_batch = max(1, min(MAX_WAKEUP_BATCH, config.ring_buffer_bytes // RING_SLOT_BYTES // 8))
    return CONFIG_RECORD.pack(flags, config.uid or 0, config.netns or 0, config.family or 0,
                              comm, wakeup_batch)


def remote_key(network: IPNetwork) -> bytes:
    """LPM key: prefix length + 16 bytes; IPv4 ranges as IPv4-mapped IPv6 (::ffff:0:0/96)."""
    if network.version == 4:
        addr = b"\0" * 10 + b"\xff\xff" + network.network_address.packed
        return struct.pack("<I", 96 + network.prefixlen) + addr
    return struct.pack("<I", network.prefixlen) + network.network_address.packed


class Tracer:
    """Loads the BPF object with the best attach method that works, and yields raw records.

    Use as a context manager: on exit every link, map and program is released.
    """

    def __init__(self, config: Config, log: Optional[Callable[[str], None]] = None) -> None:
        self.config = config
        self.log = log or (lambda _msg: None)
        self.method: Optional[str] = None
        self.rejected: dict[str, str] = {}  # method -> why it was not used
        self._object: Optional[libbpf.BpfObject] = None
        self._links: list[libbpf.Link] = []
        self._ring: Optional[libbpf.RingBuffer] = None
        self._batch: list[bytes] = []
        self._open_fds: list[int] = []
        self._lost_map: Optional[libbpf.Map] = None
        self._ncpus = 1

    # -- lifecycle --

    def __enter__(self) -> Tracer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        for method in probes.candidates(self.config.probe):
            reason = probes.unusable_reason(method)
            if reason is None:
                try:
                    self._start_with(probes.plan_for(method, self.config.queue_latency))
                    self.method = method
                    self.log(f"attach method: {method}")
                    return
                except libbpf.LibbpfError as exc:
                    reason = str(exc)
                    if method == "fexit" and exc.errno == errno.EPERM:
                        # As root, EPERM at load means the kernel refuses tracing programs
                        # (a lockdown or vendor policy), not a missing privilege.
                        reason = f"the kernel refuses fentry/fexit programs ({reason})"
                    self._release()
                except TcpacceptError:  # the operator's input, whatever the method
                    self._release()
                    raise
            self.rejected[method] = reason
            self.log(f"attach method {method} not usable: {reason}")
        if self.config.probe != "auto":
            raise TcpacceptError(
                f"--probe {self.config.probe} cannot work on this kernel: "
                f"{self.rejected[self.config.probe]}"
            )
        summary = "; ".join(f"{m}: {r}" for m, r in self.rejected.items())
        raise TcpacceptError(f"no attach method works on this kernel ({summary})")

    def _start_with(self, plan: probes.Plan) -> None:
        obj = self._object = libbpf.BpfObject(str(BPF_OBJECT))
        for program in obj.programs():
            program.autoload = program.name in plan.programs
        rodata = obj.map(".rodata").initial_value()
        record = config_record(self.config, plan.saved_regs)
        if len(rodata) != len(record):
            raise TcpacceptError(
                f"{BPF_OBJECT.name} does not match this tcpaccept (.rodata is {len(rodata)} "
                f"bytes, expected {len(record)}): rebuild it"
            )
        ctypes.memmove(rodata, record, len(record))
        obj.map("events").set_max_entries(self.config.ring_buffer_bytes)
        self._reuse_pinned(obj)
        obj.load()
        # libbpf parsed the kernel's BTF (~11 MB of heap) to load: hand it back to the OS.
        _libc.malloc_trim(0)
        self._fill_filter_maps(obj)
        for name in plan.programs:
            self._links.append(obj.program(name).attach())
        self._lost_map = obj.map("lost_events")
        self._ncpus = _possible_cpus()
        self._ring = libbpf.RingBuffer(obj.map("events"), self._on_sample)

    def _reuse_pinned(self, obj: libbpf.BpfObject) -> None:
        for map_name, flag, path in (("cgroupmap", "--cgroupmap", self.config.cgroupmap),
                                     ("mntnsmap", "--mntnsmap", self.config.mntnsmap)):
            if path:
                fd = _open_pinned_hash(flag, path)
                self._open_fds.append(fd)
                obj.map(map_name).reuse_fd(fd)

    def _fill_filter_maps(self, obj: libbpf.BpfObject) -> None:
        present = b"\x01"
        for pid in self.config.pids:
            obj.map("pid_filter").update(struct.pack("<I", pid), present)
        for port in self.config.lports:
            obj.map("lport_filter").update(struct.pack("<H", port), present)
        for network in self.config.remotes:
            obj.map("remote_filter").update(remote_key(network), present)
        if self.config.cgroup:
            try:
                fd = os.open(self.config.cgroup, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise TcpacceptError(f"--cgroup {self.config.cgroup}: {exc.strerror}") from None
            self._open_fds.append(fd)
            obj.map("cgroup_filter").update(struct.pack("<I", 0), struct.pack("<I", fd))

    def close(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._ring:
            self._ring.close()
            self._ring = None
        for link in self._links:
            link.close()
        self._links.clear()
        if self._object:
            self._object.close()
            self._object = None
        for fd in self._open_fds:
            os.close(fd)
        self._open_fds.clear()
        self._lost_map = None

    # -- events --

    def _on_sample(self, data: int, size: int) -> None:
        self._batch.append(ctypes.string_at(data, size))

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Raw records that arrived within timeout_ms (an empty list on timeout/signal)."""
        if self._ring is None:
            raise TcpacceptError("tracer is not started")
        self._batch = []
        self._ring.poll(timeout_ms)
        # The kernel side wakes us only for full batches: take what came without a wakeup.
        self._ring.consume()
        return self._batch

    def lost_events(self) -> int:
        """Events the kernel could not queue (ring buffer full), summed over CPUs."""
        if self._lost_map is None:
            return 0
        raw = self._lost_map.lookup(struct.pack("<I", 0), 8 * self._ncpus)
        return sum(struct.unpack(f"<{self._ncpus}Q", raw)) if raw else 0


BPF_MAP_TYPE_HASH = 1


def _open_pinned_hash(flag: str, path: str) -> int:
    """bcc's pinned filter maps are hashes keyed by a u64. libbpf adopts whatever map the
    fd names, and the verifier lets root read past a short key: check the layout here, or a
    wrong map would load and filter on garbage."""
    try:
        fd = libbpf.pinned_fd(path)
    except libbpf.LibbpfError as exc:
        raise TcpacceptError(f"{flag} {path}: not a pinned BPF map "
                             f"({libbpf.strerror(exc.errno)})") from None
    with open(f"/proc/self/fdinfo/{fd}") as fdinfo:
        info = dict(line.split(":", 1) for line in fdinfo if ":" in line)
    map_type = info.get("map_type", "").strip()
    key_size = info.get("key_size", "").strip()
    if map_type != str(BPF_MAP_TYPE_HASH) or key_size != "8":
        os.close(fd)
        found = f"map type {map_type}, key size {key_size}" if map_type else "not a map"
        raise TcpacceptError(f"{flag} {path}: want a pinned BPF hash map with 8-byte keys "
                             f"(bcc's layout), found {found}")
    return fd


def _possible_cpus() -> int:
    """Per-CPU map values have one slot per possible CPU (not just online ones)."""
    with open("/sys/devices/system/cpu/possible") as f:
        spans = f.read().strip().split(",")
    highest = max(int(span.split("-")[-1]) for span in spans)
    return highest + 1
