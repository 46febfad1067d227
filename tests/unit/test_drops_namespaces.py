"""The drop monitor's per-namespace bookkeeping and namespace discovery, on synthetic data.

The kernel side (real namespaces, real overflows) is tests/kernel/test_drops_netns.py; here
the namespaces' sockets are fakes so that failures can be injected one namespace at a time.
"""

from __future__ import annotations

import os
import socket

import pytest

from tcpaccept.drops import DropMonitorError, ListenerDropMonitor, ListenerSample
from tcpaccept.drops.namespaces import NamespaceGone, discover, open_in_namespace

HOST, CONTAINER, LATER = 4026531840, 4026532001, 4026532002


class FakeSocket:
    def __init__(self, machine: FakeMachine, inode: int) -> None:
        self.machine, self.inode, self.closed = machine, inode, False

    def dump(self, body: bytes) -> list[ListenerSample]:
        if self.inode in self.machine.broken:
            self.close()
            raise DropMonitorError("sock_diag receive failed: Connection refused")
        family = body[0]  # inet_diag_req_v2 starts with the family
        return [s for s in self.machine.listeners.get(self.inode, []) if s.family == family]

    def close(self) -> None:
        self.closed = True


class FakeMachine:
    def __init__(self) -> None:
        self.namespaces = {HOST, CONTAINER}
        self.listeners: dict[int, list[ListenerSample]] = {}
        self.broken: set[int] = set()  # dumps fail
        self.unenterable: set[int] = set()  # setns fails
        self.vanishing: set[int] = set()  # its processes exit between scan and open
        self.opened: list[int] = []

    def set(self, inode: int, *samples: ListenerSample) -> None:
        self.listeners[inode] = list(samples)


def listener(cookie: int, drops: int, port: int = 80) -> ListenerSample:
    return ListenerSample(socket.AF_INET, "127.0.0.1", port, cookie, cookie, 0, 1, drops)


@pytest.fixture
def machine(monkeypatch) -> FakeMachine:
    fake = FakeMachine()

    def discover_fake(self) -> dict[int, list[str]]:
        return {inode: [f"/proc/x/{inode}"] for inode in fake.namespaces}

    def open_fake(self, inode: int, paths: list[str]) -> FakeSocket:
        if inode in fake.unenterable:
            raise DropMonitorError(f"cannot enter network namespace {inode}: Operation not "
                                   "permitted")
        if inode in fake.vanishing:
            raise NamespaceGone(f"network namespace {inode} is gone")
        fake.opened.append(inode)
        return FakeSocket(fake, inode)

    monkeypatch.setattr(ListenerDropMonitor, "_discover", discover_fake)
    monkeypatch.setattr(ListenerDropMonitor, "_open", open_fake)
    monkeypatch.setattr("tcpaccept.drops.monitor.OwnerCache.lookup",
                        lambda self, inodes: {i: (i * 10, f"p{i}") for i in inodes})
    return fake


def drops_by_netns(monitor: ListenerDropMonitor) -> dict[int, list[tuple[int, int]]]:
    got: dict[int, list[tuple[int, int]]] = {}
    for r in monitor.poll():
        got.setdefault(r.netns, []).append((r.inode, r.dropped))
    return got


def test_same_cookie_in_two_namespaces_is_two_listeners(machine: FakeMachine) -> None:
    # Before Linux 5.12 socket cookies were counted per namespace: they can collide.
    machine.set(HOST, listener(1, 10))
    machine.set(CONTAINER, listener(1, 50))
    with ListenerDropMonitor(namespace_rescan_s=0) as monitor:
        assert monitor.poll() == []
        machine.set(HOST, listener(1, 11))
        machine.set(CONTAINER, listener(1, 53))
        assert drops_by_netns(monitor) == {HOST: [(1, 1)], CONTAINER: [(1, 3)]}


def test_one_failing_namespace_warns_once_and_the_others_go_on(machine: FakeMachine) -> None:
    machine.set(HOST, listener(1, 0))
    machine.set(CONTAINER, listener(2, 0))
    with ListenerDropMonitor(namespace_rescan_s=0) as monitor:
        monitor.poll()
        machine.broken.add(CONTAINER)
        machine.set(HOST, listener(1, 4))
        assert drops_by_netns(monitor) == {HOST: [(1, 4)]}
        (warning,) = monitor.warnings()
        assert warning == (f"network namespace {CONTAINER}: "
                           "sock_diag receive failed: Connection refused")
        assert monitor.poll() == []
        assert monitor.warnings() == []  # still failing: said once
        machine.broken.clear()
        machine.set(CONTAINER, listener(2, 6))
        assert drops_by_netns(monitor) == {CONTAINER: [(2, 6)]}
        assert monitor.warnings() == [f"network namespace {CONTAINER}: sampling works again"]
        assert machine.opened.count(CONTAINER) == 3  # a fresh socket at each poll after a failure


def test_error_only_when_no_namespace_works(machine: FakeMachine) -> None:
    with ListenerDropMonitor(namespace_rescan_s=0) as monitor:
        monitor.poll()
        machine.broken.update({HOST, CONTAINER})
        with pytest.raises(DropMonitorError, match="receive failed"):
            monitor.poll()


def test_construction_fails_only_when_no_namespace_opens(machine: FakeMachine) -> None:
    machine.unenterable.add(CONTAINER)
    with ListenerDropMonitor() as monitor:
        assert monitor.warnings() == [f"network namespace {CONTAINER}: cannot enter network "
                                      f"namespace {CONTAINER}: Operation not permitted"]
    machine.unenterable.add(HOST)
    with pytest.raises(DropMonitorError, match="Operation not permitted"):
        ListenerDropMonitor()


def test_namespace_appearing_after_start_counts_from_zero(machine: FakeMachine) -> None:
    machine.set(HOST, listener(1, 100))
    with ListenerDropMonitor(namespace_rescan_s=0) as monitor:
        monitor.poll()
        machine.namespaces.add(LATER)
        machine.set(LATER, listener(7, 9), listener(8, 0, port=81))
        assert drops_by_netns(monitor) == {LATER: [(7, 9)]}
        assert monitor.poll() == []


def test_namespace_failing_at_start_is_baselined_when_it_first_works(
    machine: FakeMachine,
) -> None:
    machine.set(CONTAINER, listener(2, 40))
    machine.broken.add(CONTAINER)
    with ListenerDropMonitor(namespace_rescan_s=0) as monitor:
        monitor.poll()
        machine.broken.clear()
        assert monitor.poll() == []  # its 40 drops are from before tracing
        machine.set(CONTAINER, listener(2, 41))
        assert drops_by_netns(monitor) == {CONTAINER: [(2, 1)]}


def test_gone_namespace_is_closed_and_forgotten(machine: FakeMachine) -> None:
    with ListenerDropMonitor(namespace_rescan_s=0) as monitor:
        monitor.poll()
        assert monitor.namespaces() == sorted({HOST, CONTAINER})
        sock = monitor._namespaces[CONTAINER].sock
        machine.namespaces.discard(CONTAINER)
        monitor.poll()
        assert monitor.namespaces() == [HOST]
        assert sock is not None and sock.closed


def test_namespace_gone_before_its_socket_opens_is_no_failure(machine: FakeMachine) -> None:
    machine.set(HOST, listener(1, 0))
    with ListenerDropMonitor(namespace_rescan_s=0) as monitor:
        monitor.poll()
        machine.namespaces.add(LATER)
        machine.vanishing.add(LATER)
        machine.set(HOST, listener(1, 2))
        assert drops_by_netns(monitor) == {HOST: [(1, 2)]}
        assert LATER not in monitor.namespaces()
        assert monitor.warnings() == []


def test_rescan_waits_for_its_interval(machine: FakeMachine) -> None:
    with ListenerDropMonitor(namespace_rescan_s=3600) as monitor:
        monitor.poll()
        machine.namespaces.add(LATER)
        monitor.poll()
        assert LATER not in monitor.namespaces()


# --- discovery ---


def test_discover_dedupes_by_inode_and_lists_named_namespaces_first(tmp_path) -> None:
    proc = tmp_path / "proc"
    for pid, inode in [(1, 111), (20, 222), (21, 222), (30, 111), (40, None)]:
        (proc / str(pid) / "ns").mkdir(parents=True)
        if inode is not None:  # pid 40: a kernel thread or an exited process, no link
            os.symlink(f"net:[{inode}]", proc / str(pid) / "ns" / "net")
    (proc / "self").mkdir()
    named = tmp_path / "netns"
    named.mkdir()
    (named / "blue").write_text("")  # a bind mount in real life; stat gives the ns inode
    blue = os.stat(named / "blue").st_ino
    found = discover(str(proc), str(named))
    assert {inode: sorted(paths) for inode, paths in found.items()} == {
        111: [f"{proc}/1/ns/net", f"{proc}/30/ns/net"],
        222: [f"{proc}/20/ns/net", f"{proc}/21/ns/net"],
        blue: [f"{named}/blue"],
    }


def test_discover_without_named_namespaces(tmp_path) -> None:
    (tmp_path / "5" / "ns").mkdir(parents=True)
    os.symlink("net:[9]", tmp_path / "5" / "ns" / "net")
    assert discover(str(tmp_path), str(tmp_path / "absent")) == {9: [f"{tmp_path}/5/ns/net"]}


def test_open_in_a_vanished_namespace_says_gone(tmp_path) -> None:
    with pytest.raises(NamespaceGone):
        open_in_namespace(123, [str(tmp_path / "1" / "ns" / "net")])


def test_open_through_a_reused_pid_says_gone(tmp_path) -> None:
    # The path now leads to another namespace than the scan saw (the pid was reused).
    own = "/proc/thread-self/ns/net"
    with pytest.raises(NamespaceGone):
        open_in_namespace(os.stat(own).st_ino + 1, [own])

