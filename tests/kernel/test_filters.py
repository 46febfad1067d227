"""Issue 4: every operator filter, proven through the kernel on mixed traffic.

One module-wide set of servers differs in every filtered property: pid, comm, uid, local
port, family (incl. an IPv4 client of a dual-stack listener), client address, network
namespace, cgroup and mount namespace. Each test starts tcpaccept with one filter, drives
the same fixed set of connections from every source, and asserts the run reported exactly
the expected accepts, matched by (pid, lport, rport), and nothing else of ours. Other
processes on the host may accept connections meanwhile: their events are only required to
satisfy the filter.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import pytest

from tests.support.servers import Server, connect, start_server
from tests.support.tracer import BANNER, start_tracer, tcpaccept_command

NETNS = ("tcpaccept-t1", "tcpaccept-t2")
NOBODY = 65534
V6_EXTRA = "fd00:7c::2"  # a second IPv6 source address, on lo inside NETNS[1]


def cgroup2_mount() -> str:
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    pytest.fail("no cgroup v2 hierarchy mounted", pytrace=False)


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Conn:
    """One accepted connection, with everything the filters look at."""

    server: str  # name in Traffic.servers
    pid: int
    comm: str
    uid: int
    netns: int
    lport: int
    rport: int
    family: int  # as shown by default: the IPv4 client of a dual-stack listener is 4
    raddr: str  # as shown by default (unmapped)
    raw_raddr: str  # as shown with --no-unmap
    fd: int  # the accepted socket's descriptor in the server

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.pid, self.lport, self.rport)


@dataclass(frozen=True)
class Client:
    server: str
    host: str  # address connected to
    family: int
    source: Optional[str] = None


class Traffic:
    """The servers, and a fixed set of clients to drive through them on each run."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.servers: dict[str, Server] = {}
        self.uids: dict[str, int] = {}
        self.netns_of: dict[str, int] = {}
        self.netns_name: dict[str, Optional[str]] = {}
        self.cgroup_root = cgroup2_mount()
        self.cgroup_base = os.path.join(self.cgroup_root, f"tcpaccept-filters-{os.getpid()}")
        self.cgroups = {
            "g1": os.path.join(self.cgroup_base, "g1"),
            "g1child": os.path.join(self.cgroup_base, "g1", "child"),
            "g2": os.path.join(self.cgroup_base, "g2"),
        }
        self.bpffs = os.path.join(tmp, "bpffs")
        self.clients: list[Client] = []

    # -- set-up and teardown --

    def setup(self) -> None:
        for name in NETNS:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)  # stale
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", NETNS[1], "-6", "addr", "add", f"{V6_EXTRA}/128", "dev", "lo", "nodad")
        for path in self.cgroups.values():
            os.makedirs(path)
        os.makedirs(self.bpffs)
        sh("mount", "-t", "bpf", "bpf", self.bpffs)

        host_netns = os.stat("/proc/self/ns/net").st_ino
        v4, v6 = socket.AF_INET, socket.AF_INET6
        # a: root, 127.0.0.1, cgroup g1.
        self._add("a", start_server("127.0.0.1", v4, comm="fltsrv-a"), "g1")
        # ab: nobody, ::1, cgroup g1/child; its comm extends a's (a prefix is no match).
        nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        self._add("ab", start_server("::1", v6, comm="fltsrv-ab", prefix=nobody), "g1child",
                  uid=NOBODY)
        # dual: dual-stack [::], own mount namespace, cgroup g2.
        self._add("dual", start_server("::", v6, comm="fltsrv-dual", v6only=False,
                                       prefix=["unshare", "-m"]), "g2")
        # ns1: same comm and port as a, in netns t1.
        port_a, port_ab = self.servers["a"].port, self.servers["ab"].port
        self._add("ns1", start_server("127.0.0.1", v4, comm="fltsrv-a", port=port_a,
                                      netns=NETNS[0]), netns=NETNS[0])
        # ns2: same port as ab, IPv6 only, in netns t2, a 15-byte comm (the kernel's limit).
        self._add("ns2", start_server("::", v6, comm="fltsrv-ns2-long", port=port_ab,
                                      netns=NETNS[1]), netns=NETNS[1])
        for name in self.servers:
            netns = self.netns_name[name]
            self.netns_of[name] = (os.stat(f"/run/netns/{netns}").st_ino if netns
                                   else host_netns)

        self.clients = [
            Client("a", "127.0.0.1", v4),
            Client("a", "127.0.0.1", v4),
            Client("a", "127.0.0.1", v4, source="127.0.0.2"),
            Client("ab", "::1", v6),
            Client("ab", "::1", v6),
            Client("dual", "127.0.0.1", v4),
            Client("dual", "127.0.0.1", v4, source="127.0.0.2"),
            Client("dual", "::1", v6),
            Client("ns1", "127.0.0.1", v4),
            Client("ns1", "127.0.0.1", v4, source="127.0.0.2"),
            Client("ns2", "::1", v6),
            Client("ns2", V6_EXTRA, v6, source=V6_EXTRA),
        ]

    def _add(self, name: str, server: Server, cgroup: Optional[str] = None,
             uid: int = 0, netns: Optional[str] = None) -> None:
        self.servers[name] = server
        self.uids[name] = uid
        self.netns_name[name] = netns
        if cgroup:
            with open(os.path.join(self.cgroups[cgroup], "cgroup.procs"), "w") as procs:
                procs.write(str(server.pid))

    def teardown(self) -> None:
        for server in self.servers.values():
            server.close()
        for name in NETNS:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        for path in sorted(self.cgroups.values(), key=len, reverse=True) + [self.cgroup_base]:
            for _ in range(50):  # the servers' exits may not have left the cgroup yet
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        subprocess.run(["umount", self.bpffs], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- facts the tests use --

    def pid(self, name: str) -> int:
        return self.servers[name].pid

    def pids(self) -> set[int]:
        return {s.pid for s in self.servers.values()}

    def cgroup_id(self, cgroup: str) -> int:
        return os.stat(self.cgroups[cgroup]).st_ino

    def mntns(self, name: str) -> int:
        return os.stat(f"/proc/{self.pid(name)}/ns/mnt").st_ino

    def pin_hash(self, name: str, keys: list[int], value_size: int = 8,
                 map_type: str = "hash", key_size: int = 8) -> str:
        """A bcc-style pinned filter map: hash, u64 key -> u64 (cgroupset) or u32 (mntns)."""
        path = os.path.join(self.bpffs, name)
        sh("bpftool", "map", "create", path, "type", map_type, "key", str(key_size),
           "value", str(value_size), "entries", "16", "name", name[:15])
        for key in keys:
            sh("bpftool", "map", "update", "pinned", path, "key", "hex",
               *struct.pack("<Q", key).hex(" ").split(),
               "value", "hex", *["01"] + ["00"] * (value_size - 1))
        return path

    # -- one round of traffic --

    def drive(self) -> list[Conn]:
        """Connect every client, have each server accept them; return what was accepted."""
        opened: list[tuple[Client, socket.socket]] = []
        for client in self.clients:
            sock = connect(client.host, self.servers[client.server].port, client.family,
                           source=client.source, netns=self.netns_name[client.server])
            opened.append((client, sock))
        conns = []
        for name, server in self.servers.items():
            mine = [(c, s) for c, s in opened if c.server == name]
            accepted = server.accept(len(mine))
            peers = {peer_port: (peer_addr, fd) for peer_addr, peer_port, fd in accepted}
            for _client, sock in mine:
                rport = sock.getsockname()[1]
                raw, fd = peers[rport]
                shown = raw.removeprefix("::ffff:") if "." in raw else raw
                conns.append(Conn(name, server.pid, server.comm, self.uids[name],
                                  self.netns_of[name], server.port, rport,
                                  4 if "." in raw else 6, shown, raw, fd))
        for _client, sock in opened:
            sock.close()
        return conns


@pytest.fixture(scope="module")
def traffic() -> Iterator[Traffic]:
    t = Traffic(tempfile.mkdtemp(prefix="tcpaccept-filters-"))
    try:
        t.setup()
        yield t
    finally:
        t.teardown()


def traced(traffic: Traffic, *args: str) -> tuple[list[Conn], list[dict]]:
    """Start tcpaccept with args, drive one round of traffic, return (conns, events)."""
    run = start_tracer(*args)
    try:
        conns = traffic.drive()
    finally:
        run.stop()
    assert run.returncode == 0, run.stderr
    return conns, run.events()


def assert_exactly(traffic: Traffic, conns: list[Conn], events: list[dict],
                   wanted: Callable[[Conn], bool],
                   allowed: Callable[[dict], bool] = lambda e: True) -> list[dict]:
    """Our events are exactly the wanted conns; anyone else's must pass allowed()."""
    ours = [e for e in events if e["pid"] in traffic.pids()]
    got = sorted((e["pid"], e["lport"], e["rport"]) for e in ours)
    expected = sorted(c.key for c in conns if wanted(c))
    assert expected, "a filter test must expect some events"
    assert len(expected) < len(conns), "a filter test must expect some events to be dropped"
    names = {c.key: c.server for c in conns}
    assert got == expected, (
        f"got {[names.get(k, k) for k in got]}, expected {[names[k] for k in expected]}")
    foreign = [e for e in events if e["pid"] not in traffic.pids()]
    assert all(allowed(e) for e in foreign), foreign
    return ours


def test_unfiltered_run_sees_every_source(traffic: Traffic) -> None:
    conns, events = traced(traffic)
    ours = sorted((e["pid"], e["lport"], e["rport"]) for e in events
                  if e["pid"] in traffic.pids())
    assert ours == sorted(c.key for c in conns)
    assert len(conns) == len(traffic.clients)


def test_pid_two_pids(traffic: Traffic) -> None:
    pids = {traffic.pid("a"), traffic.pid("ns2")}
    conns, events = traced(traffic, "-p", ",".join(map(str, sorted(pids))))
    assert_exactly(traffic, conns, events, lambda c: c.pid in pids, lambda e: False)


def test_port_two_ports(traffic: Traffic) -> None:
    # a and ns1 share a port (in different netns), ab and ns2 another; dual has its own.
    ports = {traffic.servers["a"].port, traffic.servers["ab"].port}
    conns, events = traced(traffic, "-P", ",".join(map(str, sorted(ports))))
    assert_exactly(traffic, conns, events, lambda c: c.lport in ports,
                   lambda e: e["lport"] in ports)
    assert {c.server for c in conns if c.lport in ports} == {"a", "ab", "ns1", "ns2"}


def test_ipv4_includes_mapped_client_of_dual_stack_listener(traffic: Traffic) -> None:
    conns, events = traced(traffic, "-4")
    ours = assert_exactly(traffic, conns, events, lambda c: c.family == 4,
                          lambda e: e["family"] == 4)
    dual = [e for e in ours if e["pid"] == traffic.pid("dual")]
    assert sorted(e["raddr"] for e in dual) == ["127.0.0.1", "127.0.0.2"]
    assert all(e["family"] == 4 and e["laddr"] == "127.0.0.1" for e in dual)
    assert all(e["family"] == 4 for e in ours)


def test_ipv6_excludes_mapped_client_of_dual_stack_listener(traffic: Traffic) -> None:
    conns, events = traced(traffic, "-6")
    ours = assert_exactly(traffic, conns, events, lambda c: c.family == 6,
                          lambda e: e["family"] == 6 and "." not in e["raddr"])
    assert [e["raddr"] for e in ours if e["pid"] == traffic.pid("dual")] == ["::1"]


@pytest.mark.method_agnostic  # user space's work on the records
def test_no_unmap_shows_the_raw_mapped_address(traffic: Traffic) -> None:
    conns, events = traced(traffic, "--no-unmap", "-p", str(traffic.pid("dual")))
    ours = assert_exactly(traffic, conns, events, lambda c: c.server == "dual")
    by_key = {(e["pid"], e["lport"], e["rport"]): e for e in ours}
    for c in conns:
        if c.server == "dual":
            assert by_key[c.key]["raddr"] == c.raw_raddr
    assert sorted(e["raddr"] for e in ours) == ["::1", "::ffff:127.0.0.1", "::ffff:127.0.0.2"]
    assert {e["laddr"] for e in ours} == {"::1", "::ffff:127.0.0.1"}


@pytest.mark.method_agnostic  # user space's work on the records
def test_no_unmap_with_ipv4_still_counts_mapped_clients_as_ipv4(traffic: Traffic) -> None:
    conns, events = traced(traffic, "--no-unmap", "-4", "-p", str(traffic.pid("dual")))
    ours = assert_exactly(traffic, conns, events,
                          lambda c: c.server == "dual" and c.family == 4)
    assert sorted(e["raddr"] for e in ours) == ["::ffff:127.0.0.1", "::ffff:127.0.0.2"]


@pytest.mark.method_agnostic  # task_wanted(): the same helper calls whatever the method
def test_uid(traffic: Traffic) -> None:
    conns, events = traced(traffic, "-u", str(NOBODY))
    ours = assert_exactly(traffic, conns, events, lambda c: c.uid == NOBODY,
                          lambda e: e["uid"] == NOBODY)
    assert {e["uid"] for e in ours} == {NOBODY}


@pytest.mark.method_agnostic  # task_wanted(): the same helper calls whatever the method
def test_uid_zero(traffic: Traffic) -> None:
    # 0 is a real filter value, not "no filter".
    conns, events = traced(traffic, "-u", "0")
    assert_exactly(traffic, conns, events, lambda c: c.uid == 0, lambda e: e["uid"] == 0)


@pytest.mark.method_agnostic  # task_wanted(): the same helper calls whatever the method
def test_comm_matches_whole_name_in_every_netns(traffic: Traffic) -> None:
    conns, events = traced(traffic, "-c", "fltsrv-a")
    assert_exactly(traffic, conns, events, lambda c: c.comm == "fltsrv-a",
                   lambda e: e["comm"] == "fltsrv-a")
    assert {c.server for c in conns if c.comm == "fltsrv-a"} == {"a", "ns1"}


@pytest.mark.method_agnostic  # task_wanted(): the same helper calls whatever the method
def test_comm_of_the_full_fifteen_bytes(traffic: Traffic) -> None:
    conns, events = traced(traffic, "-c", "fltsrv-ns2-long")
    assert_exactly(traffic, conns, events, lambda c: c.server == "ns2",
                   lambda e: e["comm"] == "fltsrv-ns2-long")


@pytest.mark.parametrize("which", ["name", pytest.param("proc", marks=pytest.mark.method_agnostic)])
def test_netns(traffic: Traffic, which: str) -> None:
    inode = (os.stat(f"/run/netns/{NETNS[0]}").st_ino if which == "name"
             else os.stat(f"/proc/{traffic.pid('ns1')}/ns/net").st_ino)
    conns, events = traced(traffic, "-N", str(inode))
    ours = assert_exactly(traffic, conns, events, lambda c: c.server == "ns1", lambda e: False)
    assert {e["netns"] for e in ours} == {inode}


@pytest.mark.method_agnostic  # task_wanted(): the same helper calls whatever the method
def test_cgroup_includes_descendants(traffic: Traffic) -> None:
    conns, events = traced(traffic, "--cgroup", traffic.cgroups["g1"])
    assert_exactly(traffic, conns, events, lambda c: c.server in ("a", "ab"), lambda e: False)


@pytest.mark.method_agnostic  # task_wanted(): the same helper calls whatever the method
def test_cgroup_child_only(traffic: Traffic) -> None:
    conns, events = traced(traffic, "--cgroup", traffic.cgroups["g1child"])
    assert_exactly(traffic, conns, events, lambda c: c.server == "ab", lambda e: False)


def test_remote_ipv4_and_ipv6_ranges(traffic: Traffic) -> None:
    conns, events = traced(traffic, "-r", f"127.0.0.2/32,{V6_EXTRA}/120")
    wanted = {"127.0.0.2", V6_EXTRA}
    assert_exactly(traffic, conns, events, lambda c: c.raddr in wanted,
                   lambda e: e["raddr"] in wanted)
    # Includes the IPv4 client of the dual-stack listener (matched as ::ffff:127.0.0.2).
    assert {c.server for c in conns if c.raddr in wanted} == {"a", "dual", "ns1", "ns2"}


# The remote trie's keys; test_remote_ipv4_and_ipv6_ranges reads them on each method.
@pytest.mark.method_agnostic
def test_remote_wide_ipv4_range_does_not_match_ipv6(traffic: Traffic) -> None:
    conns, events = traced(traffic, "-r", "0.0.0.0/0")
    assert_exactly(traffic, conns, events, lambda c: c.family == 4,
                   lambda e: e["family"] == 4)


@pytest.mark.method_agnostic  # task_wanted(): the same helper calls whatever the method
def test_cgroupmap_matches_exact_cgroup_ids(traffic: Traffic) -> None:
    # g1 and g2, not g1/child: bcc's map holds exact ids, no descendants.
    path = traffic.pin_hash("cgroupset", [traffic.cgroup_id("g1"), traffic.cgroup_id("g2")])
    conns, events = traced(traffic, "--cgroupmap", path)
    assert_exactly(traffic, conns, events, lambda c: c.server in ("a", "dual"),
                   lambda e: False)


@pytest.mark.method_agnostic  # task_wanted(): the same helper calls whatever the method
def test_mntnsmap(traffic: Traffic) -> None:
    assert traffic.mntns("dual") != os.stat("/proc/self/ns/mnt").st_ino
    path = traffic.pin_hash("mount_ns_set", [traffic.mntns("dual")], value_size=4)
    conns, events = traced(traffic, "--mntnsmap", path)
    assert_exactly(traffic, conns, events, lambda c: c.server == "dual", lambda e: False)


@pytest.mark.method_agnostic  # a pinned map checked in user space, before any load
@pytest.mark.parametrize("flag", ["--cgroupmap", "--mntnsmap"])
@pytest.mark.parametrize("map_type,key_size", [("hash", 4), ("array", 4)])
def test_pinned_map_of_the_wrong_layout_is_refused(traffic: Traffic, flag: str, map_type: str,
                                                    key_size: int) -> None:
    # Such a map would load (root may read past a short key) and filter on garbage.
    path = os.path.join(traffic.bpffs, f"bad{flag}{map_type}")
    sh("bpftool", "map", "create", path, "type", map_type, "key", str(key_size), "value", "8",
       "entries", "4", "name", "bad")
    result = subprocess.run(tcpaccept_command(flag, path, "-d", "5"), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2  # a bad value, like every other flag's
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"tcpaccept: {flag} {path}: ") and "hash" in line, line


def test_filters_combine(traffic: Traffic) -> None:
    port = traffic.servers["a"].port
    conns, events = traced(traffic, "-P", str(port), "-4", "-r", "127.0.0.2/32", "-c",
                           "fltsrv-a", "-N", str(traffic.netns_of["ns1"]))
    assert_exactly(traffic, conns, events,
                   lambda c: c.server == "ns1" and c.raddr == "127.0.0.2", lambda e: False)


# -- stopping by itself, and the output columns --

@pytest.mark.method_agnostic  # user space's work on the records
def test_count_exits_after_exactly_that_many_rows(traffic: Traffic) -> None:
    run = start_tracer("-n", "3", "-p", str(traffic.pid("a")), json_mode=False)
    try:
        traffic.drive()  # a accepts three connections
        run.proc.wait(10)
    finally:
        run.stop()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == BANNER
    assert lines[1].startswith("TIME ")
    assert len(lines) == 5, lines
    assert all(row.split()[1] == str(traffic.pid("a")) for row in lines[2:])


@pytest.mark.method_agnostic  # user space's work on the records
def test_duration_exits_by_itself() -> None:
    run = start_tracer("-d", "1", json_mode=False)
    started = time.monotonic()  # the banner is out: tracing has begun
    run.proc.wait(10)
    elapsed = time.monotonic() - started
    run.stop()
    assert run.returncode == 0, run.stderr
    assert 0.5 <= elapsed < 3, elapsed
    assert run.stdout.splitlines()[0] == BANNER


@pytest.mark.method_agnostic  # user space's work on the records
def test_relative_timestamps(traffic: Traffic) -> None:
    started = time.monotonic()
    run = start_tracer("-t", "-p", str(traffic.pid("a")), json_mode=False)
    traffic.drive()
    run.stop()
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[1].split()[0] == "TIME(s)"
    rows = lines[2:]
    assert len(rows) == 3, lines
    stamps = [row.split()[0] for row in rows]
    assert all(re.fullmatch(r"\d+\.\d{3}", s) for s in stamps), stamps
    assert all(0 <= float(s) <= elapsed for s in stamps), (stamps, elapsed)
    assert stamps == sorted(stamps, key=float)


@pytest.mark.method_agnostic  # user space's work on the records
def test_extended_columns(traffic: Traffic) -> None:
    pids = f"{traffic.pid('ab')},{traffic.pid('ns1')}"
    run = start_tracer("-x", "-p", pids, json_mode=False)
    conns = traffic.drive()
    run.stop()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[1].split()[-5:] == ["UID", "NETNS", "FD", "CONTAINER", "CGROUP"]
    rows = [line.split() for line in lines[2:]]
    wanted = [c for c in conns if c.server in ("ab", "ns1")]
    assert len(rows) == len(wanted), lines
    by_rport = {int(row[4]): row for row in rows}  # TIME PID COMM RADDR RPORT ...
    for c in wanted:
        row = by_rport[c.rport]
        uid, netns, fd, container, cgroup = row[-5:]
        assert container == "-"  # not in a container
        assert int(row[1]) == c.pid
        assert int(uid) == c.uid
        assert int(netns) == c.netns
        assert fd in ("-", str(c.fd))  # fexit/kprobe cannot know descriptors
        expected = ("/" + os.path.relpath(traffic.cgroups["g1child"], traffic.cgroup_root)
                    if c.server == "ab" else _cgroup_of(traffic.pid("ns1")))
        assert cgroup == expected, (row, expected)


def _cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    raise AssertionError(f"no cgroup v2 entry for {pid}")
