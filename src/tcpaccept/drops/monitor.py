"""ListenerDropMonitor: per-listener drop counts, in every network namespace, as model.Drop."""

from __future__ import annotations

import socket
import time

from ..model import Drop
from . import namespaces
from .abi import DropMonitorError, ListenerSample, port_ranges, request_body
from .diag_socket import DiagSocket
from .owners import OwnerCache

# Cookies of listeners that vanished from a dump, kept so a listener that shows up again (it
# was skipped by a dump racing with bind/close, or it stopped and resumed listening) resumes
# from its old counter instead of having its whole history reported again.
_TOMBSTONES_MAX = 65536
# New namespaces (containers starting) are looked for this often; each scan reads one
# /proc/PID/ns/net link per process (about 1 ms for 500 processes).
NAMESPACE_RESCAN_S = 2.0


class _Namespace:
    """One network namespace: its sock_diag socket and its listeners' counters."""

    def __init__(self, inode: int, paths: list[str], counts_from_zero: bool) -> None:
        self.inode = inode
        self.paths = paths  # how to enter it again when its socket must be reopened
        self.sock: DiagSocket | None = None
        # cookie -> (sk_drops at the last poll, inode). None until the baseline dump; a
        # namespace that appeared after tracing started has every listener new: {}.
        self.last: dict[int, tuple[int, int]] | None = {} if counts_from_zero else None
        self.tombstones: dict[int, int] = {}  # cookie -> last sk_drops of a gone listener
        self.failing = False  # warned about; quiet until it works again

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def bury(self, cookie: int, drops: int) -> None:
        if len(self.tombstones) >= _TOMBSTONES_MAX:
            del self.tombstones[next(iter(self.tombstones))]  # oldest first
        self.tombstones[cookie] = drops


class ListenerDropMonitor:
    """Reports, per TCP listener, the connections the kernel refused since the last poll.

    Baseline rule: listeners present at the first poll() start from their counter at that
    moment (drops from before tracing are history, not news). A listener first seen at a
    later poll was created after tracing started, so it starts from 0 and all of its drops
    are reported; the caller should therefore poll() once right when tracing starts. The
    same holds for a whole network namespace first seen after the first poll (a container
    started later): all its listeners start from 0.
    Drops a listener takes between the last poll and its close() are not seen (the socket is
    gone before it can be sampled); the namespace's TcpExt ListenOverflows still counts them.

    With ``all_namespaces`` every network namespace with a process in it (or an ``ip netns``
    name) is sampled through its own sock_diag socket; new namespaces are looked for every
    ``namespace_rescan_s`` seconds, gone ones are closed. A namespace that cannot be entered
    or sampled is skipped with a warning (see warnings()); DropMonitorError is raised only
    when no namespace can be sampled at all. Not thread-safe.
    """

    poll_interval_s = 1.0  # each poll() is a dump of every namespace

    def __init__(
        self,
        ports: frozenset[int] | None = None,
        all_namespaces: bool = True,
        *,
        namespace_rescan_s: float = NAMESPACE_RESCAN_S,
    ) -> None:
        self._ports = frozenset(ports) if ports is not None else None
        if self._ports is not None:
            port_ranges(self._ports)  # fail early on bad ports
        # The request never changes but for its sequence number: build the bodies once.
        self._bodies = [request_body(f, self._ports) for f in (socket.AF_INET, socket.AF_INET6)]
        self._all = all_namespaces
        self._rescan_s = namespace_rescan_s
        self._next_rescan = 0.0
        self._started = False  # the first poll (the baseline) happened
        self._own = namespaces.own_netns()
        self._namespaces: dict[int, _Namespace] = {}
        self._warnings: list[str] = []
        self._owners = OwnerCache()
        self._rescan()
        # Fail here, not at the first poll, when no namespace can be sampled at all.
        errors = [self._connect(ns) for ns in list(self._namespaces.values())]
        if not any(ns.sock is not None for ns in self._namespaces.values()):
            self.close()
            raise DropMonitorError(next(filter(None, errors), "no network namespace to sample"))

    def poll(self) -> list[Drop]:
        if time.monotonic() >= self._next_rescan:
            self._rescan()
        rising: list[tuple[_Namespace, ListenerSample, int, int]] = []
        errors: list[str] = []
        worked = 0
        for ns in list(self._namespaces.values()):
            try:
                samples = self._sample(ns)
            except DropMonitorError as exc:
                ns.close()
                errors.append(self._failed(ns, str(exc)))
                continue
            if samples is None:
                continue  # gone before its socket could be opened
            worked += 1
            if ns.failing:
                ns.failing = False
                self._warnings.append(f"network namespace {ns.inode}: sampling works again")
            now_ns = time.time_ns()
            if ns.last is None:
                ns.last = {s.cookie: (s.drops, s.inode) for s in samples}
                continue
            rising.extend((ns, s, delta, now_ns) for s, delta in self._diff(ns, samples))
        if errors and not worked:
            raise DropMonitorError(errors[0])
        self._started = True
        return self._reports(rising)

    def flush(self) -> list[Drop]:
        """Final poll at exit: whatever the counters gained since the last poll."""
        return self.poll()

    def warnings(self) -> list[str]:
        """One-line notes about namespaces that could not be sampled; cleared when read."""
        notes, self._warnings = self._warnings, []
        return notes

    def namespaces(self) -> list[int]:
        """Inodes of the network namespaces being sampled."""
        return sorted(self._namespaces)

    def close(self) -> None:
        for ns in self._namespaces.values():
            ns.close()

    def __enter__(self) -> ListenerDropMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- namespaces ---

    def _discover(self) -> dict[int, list[str]]:
        if not self._all:
            return {self._own: []}
        found = namespaces.discover()
        found.setdefault(self._own, [])  # a tracer in a namespace of its own, alone
        return found

    def _open(self, inode: int, paths: list[str]) -> DiagSocket:
        if inode == self._own:
            return DiagSocket.open()  # no namespace switch needed for our own
        return namespaces.open_in_namespace(inode, paths)

    def _rescan(self) -> None:
        self._next_rescan = time.monotonic() + self._rescan_s
        found = self._discover()
        for inode in [i for i in self._namespaces if i not in found]:
            self._namespaces.pop(inode).close()  # its last process is gone: so are its sockets
        for inode, paths in found.items():
            ns = self._namespaces.get(inode)
            if ns is None:
                self._namespaces[inode] = _Namespace(inode, paths, counts_from_zero=self._started)
            else:
                ns.paths = paths

    def _connect(self, ns: _Namespace) -> str | None:
        """Opens the namespace's socket if needed; the error message when that fails. A
        namespace whose processes all exited meanwhile is forgotten (ns.sock stays None)."""
        if ns.sock is not None and not ns.sock.closed:
            return None
        ns.sock = None
        try:
            ns.sock = self._open(ns.inode, ns.paths)
        except namespaces.NamespaceGone:
            self._namespaces.pop(ns.inode, None)
        except DropMonitorError as exc:
            return self._failed(ns, str(exc))
        return None

    def _failed(self, ns: _Namespace, error: str) -> str:
        if not ns.failing:
            ns.failing = True
            self._warnings.append(f"network namespace {ns.inode}: {error}")
        return error

    # --- counters ---

    def _sample(self, ns: _Namespace) -> list[ListenerSample] | None:
        """The namespace's listeners; None when it turned out to be gone."""
        error = self._connect(ns)
        if error is not None:
            raise DropMonitorError(error)
        if ns.sock is None:
            return None
        samples: list[ListenerSample] = []
        for body in self._bodies:
            samples.extend(ns.sock.dump(body))
        if self._ports is not None:
            # The kernel filtered already; this covers a filter too big to send.
            samples = [s for s in samples if s.lport in self._ports]
        return samples

    def _diff(
        self, ns: _Namespace, samples: list[ListenerSample]
    ) -> list[tuple[ListenerSample, int]]:
        assert ns.last is not None
        current: dict[int, tuple[int, int]] = {}
        rising: list[tuple[ListenerSample, int]] = []
        for s in samples:
            if s.cookie in current:
                continue  # a dump racing with bind/close can return a socket twice
            previous = ns.last.get(s.cookie)
            # New since the last poll: a listener we saw before (tombstone) or one that
            # appeared after tracing started, whose every drop is news.
            before = previous[0] if previous is not None else ns.tombstones.pop(s.cookie, 0)
            current[s.cookie] = (s.drops, s.inode)
            delta = (s.drops - before) & 0xFFFFFFFF  # sk_drops is a wrapping 32-bit counter
            if delta:
                rising.append((s, delta))
        for cookie, (drops, inode) in ns.last.items():
            if cookie not in current:
                ns.bury(cookie, drops)
                self._owners.forget(inode)
        ns.last = current
        return rising

    def _reports(self, rising: list[tuple[_Namespace, ListenerSample, int, int]]) -> list[Drop]:
        if not rising:
            return []
        owners = self._owners.lookup(s.inode for _, s, _, _ in rising)
        reports = []
        for ns, s, delta, sampled_ns in rising:
            pid, comm = owners.get(s.inode, (None, None))
            reports.append(
                Drop(
                    laddr=s.laddr,
                    lport=s.lport,
                    family=s.family,
                    pid=pid,
                    comm=comm,
                    backlog=s.backlog,
                    backlog_max=s.backlog_max,
                    dropped=delta,
                    inode=s.inode,
                    netns=ns.inode,
                    time_ns=sampled_ns,
                )
            )
        return reports
