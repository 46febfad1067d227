"""Listener dump cost: tcpaccept's own sock_diag code against pyroute2's DiagSocket (issue 9 #6).

    sudo .venv/bin/pip install pyroute2      # only for this comparison; not a dependency
    sudo .venv/bin/python bench/sock_diag_cost.py [--listeners 1000] [--polls 50]

The bench moves itself into a fresh network namespace (unshare), opens N TCP listeners
there (half IPv4, half IPv6, on wildcard addresses), and measures, side by side:
- import cost, in a fresh interpreter with the tcpaccept package already imported (median
  of 5): time, modules loaded, RSS added;
- one poll: dump the listeners of both families with INET_DIAG_SKMEMINFO and get every
  listener's sk_drops (SK_MEMINFO_DROPS) out, median and p90 over the polls;
- what each offers the drop monitor: SKMEMINFO decoding, a port filter in the kernel,
  a socket inside another network namespace;
- the monitor's poll over every namespace with --namespaces N extra (empty, ``ip netns
  add``ed, deleted at the end) namespaces, and one namespace rescan (/proc/*/ns/net).
Both sides must see the same listeners and the same drop counts (checked; exit 1 if not).
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from tcpaccept.drops import ListenerDropMonitor  # noqa: E402
from tcpaccept.drops.abi import (  # noqa: E402
    INET_DIAG_SKMEMINFO,
    SK_MEMINFO_DROPS,
    TCP_LISTEN,
    request_body,
)
from tcpaccept.drops.diag_socket import DiagSocket  # noqa: E402
from tcpaccept.drops.namespaces import discover  # noqa: E402

CLONE_NEWNET = 0x40000000
FAMILIES = (socket.AF_INET, socket.AF_INET6)
IMPORT_RUNS = 5

OURS_IMPORT = "import tcpaccept.drops"
PYROUTE2_IMPORT = "from pyroute2 import DiagSocket"
# The tool has imported the tcpaccept package (config, event, tracer: ~60 ms) before it
# needs a listener dump, so what counts is what the dump code adds on top of that.
# RSS from /proc/self/status: ru_maxrss would start from the forking parent's peak.
IMPORT_PROBE = """
import sys, time
import tcpaccept
def rss():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])
before_rss = rss()
before_mods = len(sys.modules)
t = time.perf_counter()
{statement}
took = time.perf_counter() - t
print(took, len(sys.modules) - before_mods, rss() - before_rss)
"""

Snapshot = dict[tuple[int, int], int]  # (family, port) -> sk_drops


def enter_private_netns() -> str:
    """A namespace of our own: only the bench's listeners, nothing of other tests."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return f"the caller's namespace (unshare: {os.strerror(ctypes.get_errno())})"
    return "a fresh network namespace"


def open_listeners(count: int) -> list[socket.socket]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    listeners = []
    for i in range(count):
        family = FAMILIES[i % 2]
        sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("0.0.0.0" if family == socket.AF_INET else "::", 0))
        sock.listen(16)
        listeners.append(sock)
    return listeners


def add_namespaces(count: int) -> list[str]:
    names = []
    for i in range(count):
        name = f"sockdiag-bench-{os.getpid()}-{i}"
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
        names.append(name)
    return names


def delete_namespaces(names: list[str]) -> None:
    for name in names:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)


def import_cost(statement: str) -> tuple[float, int, int] | None:
    """Median (seconds, modules, RSS KiB) of importing in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "src"))
    runs = []
    for _ in range(IMPORT_RUNS):
        done = subprocess.run([sys.executable, "-c", IMPORT_PROBE.format(statement=statement)],
                              capture_output=True, text=True, env=env, timeout=60)
        if done.returncode != 0:
            return None
        took, mods, rss = done.stdout.split()
        runs.append((float(took), int(mods), int(rss)))
    return (statistics.median(r[0] for r in runs), int(statistics.median(r[1] for r in runs)),
            int(statistics.median(r[2] for r in runs)))


# --- the two ways of taking one snapshot ---


class Ours:
    name = "tcpaccept.drops"

    def __init__(self) -> None:
        self.sock = DiagSocket.open()
        self.bodies = [request_body(f, None) for f in FAMILIES]

    def snapshot(self) -> Snapshot:
        return {(s.family, s.lport): s.drops for body in self.bodies for s in self.sock.dump(body)}

    def close(self) -> None:
        self.sock.close()


class Pyroute2:
    name = "pyroute2"

    def __init__(self) -> None:
        from pyroute2 import DiagSocket as Pyroute2DiagSocket

        self.sock = Pyroute2DiagSocket()
        self.sock.bind()

    def snapshot(self) -> Snapshot:
        out: Snapshot = {}
        for family in FAMILIES:
            for msg in self.sock.get_sock_stats(family=family, states=1 << TCP_LISTEN,
                                                extensions=1 << (INET_DIAG_SKMEMINFO - 1)):
                # pyroute2 hands SKMEMINFO over as a "aa:bb:..." hex string.
                raw = bytes.fromhex(msg.get_attr("INET_DIAG_SKMEMINFO").replace(":", ""))
                (drops,) = struct.unpack_from("=I", raw, SK_MEMINFO_DROPS * 4)
                out[(msg["idiag_family"], msg["idiag_sport"])] = drops
        return out

    def close(self) -> None:
        self.sock.close()


def time_polls(snapshot: Callable[[], object], polls: int) -> list[float]:
    snapshot()  # warm-up: first-call costs (caches, lazy imports) are not a poll's
    times = []
    for _ in range(polls):
        t = time.perf_counter()
        snapshot()
        times.append(time.perf_counter() - t)
    return times


def pyroute2_capabilities() -> dict[str, str]:
    from pyroute2 import DiagSocket as Pyroute2DiagSocket
    from pyroute2.netlink.diag import inet_diag_msg, inet_diag_req

    skmem = dict(inet_diag_msg.nla_map).get("INET_DIAG_SKMEMINFO", "absent")
    has_bytecode = any("BYTECODE" in str(n) for n in getattr(inet_diag_req, "nla_map", ()))
    takes_netns = "netns" in inspect.signature(Pyroute2DiagSocket.__init__).parameters
    return {
        "skmeminfo": f"raw, as a {skmem!r} string: caller parses",
        "port filter": ("bytecode" if has_bytecode
                        else "one sport only (no INET_DIAG_REQ_BYTECODE attribute)"),
        "netns": ("netns= argument" if takes_netns
                  else "DiagSocket() takes no netns (setns thread still ours)"),
    }


# --- report ---


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def row(label: str, ours: str, theirs: str) -> None:
    print(f"  {label:<44} {ours:<32} {theirs}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=50)
    parser.add_argument("--namespaces", type=int, default=20,
                        help="extra empty namespaces for the every-namespace poll")
    args = parser.parse_args()
    if args.listeners < 1 or args.polls < 1 or args.namespaces < 0:
        print("sock_diag_cost: --listeners and --polls must be positive, --namespaces >= 0",
              file=sys.stderr)
        return 2
    extra = add_namespaces(args.namespaces)
    try:
        return measure(args)
    finally:
        delete_namespaces(extra)


def measure(args: argparse.Namespace) -> int:
    where = enter_private_netns()
    listeners = open_listeners(args.listeners)
    try:
        import pyroute2

        version = getattr(pyroute2, "__version__", "?")
    except ImportError:
        version = None

    ours = Ours()
    ours_times = time_polls(ours.snapshot, args.polls)
    ours_seen = ours.snapshot()
    monitor = ListenerDropMonitor(all_namespaces=False)
    monitor.poll()
    monitor_times = time_polls(monitor.poll, args.polls)
    monitor.close()
    every_ns = ListenerDropMonitor()
    every_ns.poll()
    every_ns_times = time_polls(every_ns.poll, args.polls)
    namespaces = len(every_ns.namespaces())
    every_ns.close()
    rescan_times = time_polls(discover, args.polls)
    processes = sum(1 for name in os.listdir("/proc") if name.isdigit())
    ours_import = import_cost(OURS_IMPORT)

    theirs_times: list[float] = []
    theirs_seen: Snapshot = {}
    theirs_import = None
    capabilities = {}
    if version is not None:
        theirs = Pyroute2()
        theirs_times = time_polls(theirs.snapshot, args.polls)
        theirs_seen = theirs.snapshot()
        theirs.close()
        theirs_import = import_cost(PYROUTE2_IMPORT)
        capabilities = pyroute2_capabilities()
    for sock in listeners:
        sock.close()

    print(f"sock_diag listener dump, {args.listeners} listeners (half IPv4, half IPv6) in {where}"
          f", {args.polls} polls, Python {sys.version.split()[0]}, kernel {os.uname().release}")
    row("", "tcpaccept.drops", f"pyroute2 {version}" if version else "pyroute2 (not installed)")

    def imp(cost: tuple[float, int, int] | None) -> str:
        return "-" if cost is None else f"{ms(cost[0])}, {cost[1]} modules, +{cost[2]} KiB"

    row("import, on top of tcpaccept (median of 5)", imp(ours_import), imp(theirs_import))
    for label, pick in (("poll, median", statistics.median),
                        ("poll, p90", lambda t: sorted(t)[int(len(t) * 0.9) - 1])):
        row(f"{label} (dump + drops, both families)", ms(pick(ours_times)),
            ms(pick(theirs_times)) if theirs_times else "-")
    per = statistics.median(ours_times) / args.listeners * 1e6
    per_theirs = (f"{statistics.median(theirs_times) / args.listeners * 1e6:.2f} µs"
                  if theirs_times else "-")
    row("  per listener", f"{per:.2f} µs", per_theirs)
    row("listeners seen", str(len(ours_seen)), str(len(theirs_seen)) if theirs_times else "-")
    row("SKMEMINFO drops", "decoded u32", capabilities.get("skmeminfo", "-"))
    row("port filter in the kernel", "bytecode, any port set", capabilities.get("port filter", "-"))
    row("socket in another netns", "setns helper thread", capabilities.get("netns", "-"))
    print(f"  ListenerDropMonitor.poll(), this namespace: median "
          f"{ms(statistics.median(monitor_times))}; every namespace ({namespaces}): median "
          f"{ms(statistics.median(every_ns_times))}")
    print(f"  namespace rescan ({processes} processes, every 2 s): median "
          f"{ms(statistics.median(rescan_times))}")
    if version is None:
        print("sock_diag_cost: pyroute2 is not installed; pip install pyroute2 to compare",
              file=sys.stderr)
        return 1
    if ours_seen != theirs_seen or len(ours_seen) < args.listeners:
        print(f"sock_diag_cost: the two dumps disagree ({len(ours_seen)} vs {len(theirs_seen)} "
              "listeners)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
