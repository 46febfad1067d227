"""open -> configure -> load -> attach -> poll: the BPF side's whole lifetime in one place."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import time
from pathlib import Path
from typing import Callable, Optional, Union

from . import aggregate, libbpf, preflight, probes, sizing
from .btf import Btf, DataSection
from .config import Config
from .errors import TcpacceptError
from .event import Decoder, RecordLayout, default_object_path
from .load_settings import configure, remote_key
from .model import Container
from .pidns import PidNamespace, shown_pid_namespace
from .preflight import kernel_version
from .ring_buffer import MappedRing, RingBuffer, open_ring

_libc = ctypes.CDLL(None)


class Tracer:
    """Loads the BPF object with the best attach method that works, and yields raw records.

    Use as a context manager: on exit every link, map and program is released.
    """

    def __init__(self, config: Config, log: Optional[Callable[[str], None]] = None,
                 bpf_object: Union[str, Path, None] = None, aggregate: bool = False,
                 emit_records: bool = True, aggregate_remotes: bool = False) -> None:
        self.config = config
        # In-kernel aggregation (aggregate.py reads the maps); records only if lines print.
        self.aggregation = {"aggregate": aggregate, "emit_records": emit_records,
                            "aggregate_remotes": aggregate_remotes}
        self.log = log or (lambda _msg: None)
        # Another build of the object (tests): the parameter, else $TCPACCEPT_BPF_OBJECT.
        self.bpf_object = Path(bpf_object) if bpf_object else default_object_path()
        self.layout: Optional[RecordLayout] = None  # the record, from the loaded object
        self.method: Optional[str] = None
        self.rejected: dict[str, str] = {}  # method -> why it was not used
        self._object: Optional[libbpf.BpfObject] = None
        self._links: list[libbpf.Link] = []
        self._ring: Optional[Union[MappedRing, RingBuffer]] = None
        self._open_fds: list[int] = []
        self._lost_map: Optional[libbpf.Map] = None
        self._ncpus = 1
        # Where PIDs are shown and -p matched; None: the initial namespace (pidns.py).
        self.pid_namespace: Optional[PidNamespace] = None
        self._outside_map: Optional[libbpf.Map] = None
        self._kprobe_links: list[libbpf.Link] = []  # kprobe method: their misses are lost
        self._misses_reported = 0
        self._container_cgroups: set[int] = set()  # what container_cgroups holds
        self._cgroup_inode = 0  # the --cgroup directory the filter points at
        self._cgroup_gone = False

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
                    self._start_plan(probes.plan_for(method, self.config.queue_latency,
                                                     self.config.io_uring))
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
        # Every method fails alike under a seccomp profile that refuses bpf(): say that once.
        seccomp = preflight.seccomp_refusal()
        if seccomp is not None:
            raise TcpacceptError(seccomp)
        if self.config.probe != "auto":
            raise TcpacceptError(
                f"--probe {self.config.probe} cannot work on this kernel: "
                f"{self.rejected[self.config.probe]}"
            )
        summary = "; ".join(f"{m}: {r}" for m, r in self.rejected.items())
        raise TcpacceptError(f"no attach method works on this kernel ({summary})")

    def _start_plan(self, plan: probes.Plan) -> None:
        """Load and attach plan, else its fallback (same method, another program)."""
        try:
            self._start_with(plan)
        except libbpf.LibbpfError as exc:
            if plan.fallback is None:
                raise
            self.log(f"accept program {plan.variant} not usable: {exc}")
            self._release()
            plan = plan.fallback
            self._start_with(plan)
        if plan.variant:
            self.log(f"accept program: {plan.variant}")

    def _start_with(self, plan: probes.Plan) -> None:
        started = time.monotonic()
        obj = self._object = libbpf.BpfObject(str(self.bpf_object))
        for program in obj.programs():
            program.autoload = program.name in plan.programs
        btf = Btf.of_object(obj)
        self.layout = RecordLayout.from_btf(btf, self.bpf_object.name)
        rodata = DataSection(obj, btf)
        self._ncpus = _possible_cpus()
        self.pid_namespace = shown_pid_namespace()
        ring_bytes = self.ring_bytes()  # the ring's size and the wakeup batch agree
        configure(rodata, self.config, self.layout, plan.saved_regs, ring_bytes,
                  self._ncpus, self.pid_namespace)
        for name, value in self.aggregation.items():
            rodata.set(name, value)
        aggregate.size_maps(obj, remotes=self.aggregation["aggregate_remotes"],
                            aggregating=self.aggregation["aggregate"])
        self._check_filter_sizes(obj)
        obj.map("events").set_max_entries(ring_bytes)
        sets = sizing.stamp_sets(self._ncpus)
        obj.map("queue_stamps").set_max_entries(sets)
        rodata.set("stamp_sets", sets)
        self._reuse_pinned(obj)
        opened = time.monotonic()
        obj.load()
        loaded = time.monotonic()
        # libbpf parsed the kernel's BTF (~11 MB of heap) to load: hand it back to the OS.
        _libc.malloc_trim(0)
        self._fill_filter_maps(obj)
        for name in plan.programs:
            program = obj.program(name)
            self._links.append(program.attach())
            if name in probes.PROGRAMS["kprobe"]:
                self._kprobe_links.append(self._links[-1])
            if name in probes.TWIN_TRACEPOINTS:
                self._links.append(program.attach_tracepoint(*probes.TWIN_TRACEPOINTS[name]))
        self._lost_map = obj.map("lost_events")
        self._outside_map = obj.map("outside_pid_namespace")
        self._ring = open_ring(obj.map("events"))
        ms = [round((t - started) * 1e3) for t in (opened, loaded, time.monotonic())]  # -v
        self.log(f"{plan.method}: opened, loaded ({len(plan.programs)} progs), attached: {ms} ms")

    def ring_bytes(self) -> int:
        """The ring's size: as configured when lines print; else one page, the smallest
        the kernel takes. Nothing is submitted then (emit_records off), and user space maps
        the data area twice, all resident: 8 MB of the default 4 MB ring for nothing."""
        if self.aggregation["emit_records"]:
            return self.config.ring_buffer_bytes
        return mmap.PAGESIZE

    def _reuse_pinned(self, obj: libbpf.BpfObject) -> None:
        for map_name, flag, path in (("cgroupmap", "--cgroupmap", self.config.cgroupmap),
                                     ("mntnsmap", "--mntnsmap", self.config.mntnsmap)):
            if path:
                fd = _open_pinned_hash(flag, path)
                self._open_fds.append(fd)
                obj.map(map_name).reuse_fd(fd)

    def _check_filter_sizes(self, obj: libbpf.BpfObject) -> None:
        """The filter maps' capacity is the object's: too many items is the operator's
        error (exit 2), told before anything is loaded."""
        for map_name, flag, what, items in (
                ("pid_filter", "-p/--pid", "PIDs", self.config.pids),
                ("lport_filter", "-P/--port", "ports", self.config.lports),
                ("remote_filter", "-r/--remote", "address ranges", self.config.remotes)):
            limit = obj.map(map_name).max_entries
            if len(items) > limit:
                raise TcpacceptError(f"{flag}: {len(items)} {what} given, at most {limit}",
                                     exit_code=2)

    def _fill_filter_maps(self, obj: libbpf.BpfObject) -> None:
        present = b"\x01"
        for pid in self.config.pids:
            obj.map("pid_filter").update(struct.pack("<I", pid), present)
        for port in self.config.lports:
            obj.map("lport_filter").update(struct.pack("<H", port), present)
        for network in self.config.remotes:
            obj.map("remote_filter").update(remote_key(network), present)
        if self.config.cgroup:
            self._cgroup_inode = self._point_cgroup_filter(obj)

    def _point_cgroup_filter(self, obj: libbpf.BpfObject) -> int:
        """Point the --cgroup filter at the directory now at its path; its inode."""
        try:
            fd = os.open(self.config.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise TcpacceptError(f"--cgroup {self.config.cgroup}: {exc.strerror}") from None
        try:
            # The map keeps its own reference to the cgroup: the fd can go at once.
            obj.map("cgroup_filter").update(struct.pack("<I", 0), struct.pack("<I", fd))
            return os.fstat(fd).st_ino
        finally:
            os.close(fd)

    def follow_cgroup(self) -> Optional[str]:
        """Once a second with --cgroup: systemd restarts a service by removing its cgroup
        and making a new one at the same path, which the filter (holding the old cgroup)
        would never match. Follow the path; return a warning to print, or None."""
        path = self.config.cgroup
        if not path or self._object is None:
            return None
        try:
            inode = os.stat(path).st_ino
        except OSError:
            if self._cgroup_gone:
                return None
            self._cgroup_gone = True
            return f"--cgroup {path} is gone; nothing matches until it is back"
        if inode == self._cgroup_inode:
            return None
        try:
            self._cgroup_inode = self._point_cgroup_filter(self._object)
        except TcpacceptError:
            return None  # removed again in between: the next second tells
        self._cgroup_gone = False
        return f"--cgroup {path} was replaced; following the new directory"

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
        self._outside_map = None
        self._kprobe_links.clear()

    # -- events --

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Raw records that arrived within timeout_ms (an empty list on timeout/signal)."""
        if self._ring is None:
            raise TcpacceptError("tracer is not started")
        self._ring.wait(timeout_ms)
        # The kernel side wakes us only for full batches: take what came without a wakeup.
        return self._ring.consume()

    def decoder(self, unmap_ipv4: bool = True, boot_to_wall_ns: Optional[int] = None,
                container_of: Optional[Callable[[int, int], Optional[Container]]] = None,
                ) -> Decoder:
        """A decoder for this tracer's records, in the loaded object's layout."""
        if self.layout is None:
            raise TcpacceptError("tracer is not started")
        return Decoder(self.layout, unmap_ipv4=unmap_ipv4, boot_to_wall_ns=boot_to_wall_ns,
                       container_of=container_of)

    def set_container_cgroups(self, cgroup_ids: set[int]) -> None:
        """The cgroup ids the container filter lets through (the whole set, each time)."""
        if self._object is None:
            raise TcpacceptError("tracer is not started")
        table = self._object.map("container_cgroups")
        if len(cgroup_ids) > table.max_entries:
            raise TcpacceptError(f"the container filter matches {len(cgroup_ids)} cgroups, "
                                 f"more than the {table.max_entries} it can hold")
        for gone in self._container_cgroups - cgroup_ids:
            table.delete(struct.pack("<Q", gone))
        for new in cgroup_ids - self._container_cgroups:
            table.update(struct.pack("<Q", new), b"\x01")
        self._container_cgroups = set(cgroup_ids)

    def bpf_map(self, name: str) -> libbpf.Map:
        """A map of the loaded object (aggregate.py reads the aggregation maps)."""
        if self._object is None:
            raise TcpacceptError("tracer is not started")
        return self._object.map(name)

    def new_probe_misses(self) -> int:
        """Accepts the kernel did not hand to the kprobe method's programs since the last
        call (the kretprobe's maxactive, max(10, 2 * CPUs), exhausted by threads blocked in
        accept(), or a kprobe hit inside another). Read from the links (kernel 6.7+); where
        they cannot be read, said once with --verbose and 0."""
        if not self._kprobe_links:
            return 0
        try:
            if kernel_version() < (6, 7):  # 6.6 has the link info, with no missed count
                raise libbpf.LibbpfError("kprobe link info", errno.EOPNOTSUPP)
            missed = sum(link.kprobe_missed() for link in self._kprobe_links)
        except libbpf.LibbpfError as exc:
            self.log(f"kprobe misses cannot be read ({exc}; they need kernel 6.7): "
                     "accepts the kretprobe misses are not counted")
            self._kprobe_links.clear()
            return 0
        fresh, self._misses_reported = max(0, missed - self._misses_reported), missed
        return fresh

    def outside_pid_namespace(self) -> int:
        """Accepts not shown: their processes have no PID in the tracer's namespace."""
        return self._percpu_total(self._outside_map)

    def lost_events(self) -> int:
        """Events the kernel could not queue (ring buffer full), summed over CPUs."""
        return self._percpu_total(self._lost_map)

    def _percpu_total(self, counter: Optional[libbpf.Map]) -> int:
        """A one-slot per-CPU u64 counter, summed over the possible CPUs."""
        if counter is None:
            return 0
        raw = counter.lookup(struct.pack("<I", 0), 8 * self._ncpus)
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
                             f"({libbpf.strerror(exc.errno)})", exit_code=2) from None
    with open(f"/proc/self/fdinfo/{fd}") as fdinfo:
        info = dict(line.split(":", 1) for line in fdinfo if ":" in line)
    map_type = info.get("map_type", "").strip()
    key_size = info.get("key_size", "").strip()
    if map_type != str(BPF_MAP_TYPE_HASH) or key_size != "8":
        os.close(fd)
        found = f"map type {map_type}, key size {key_size}" if map_type else "not a map"
        raise TcpacceptError(f"{flag} {path}: want a pinned BPF hash map with 8-byte keys "
                             f"(bcc's layout), found {found}", exit_code=2)
    return fd


CPU_POSSIBLE = "/sys/devices/system/cpu/possible"


def _possible_cpus(path: str = CPU_POSSIBLE) -> int:
    """Per-CPU map values have one slot per possible CPU (not just online ones)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as exc:
        raise TcpacceptError(f"cannot read {path}: {exc.strerror}") from None
    try:
        # "0-3", "0,2-5", "0": the highest CPU number, plus one.
        return max(int(span.split("-")[-1]) for span in text.split(",")) + 1
    except ValueError:
        raise TcpacceptError(f"cannot count CPUs: {path} holds {text!r}, not a CPU list "
                             "such as 0-3") from None
