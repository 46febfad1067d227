"""Command line: flags -> Config/OutputConfig, then trace. No BPF here."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from typing import Callable, NoReturn, Optional, Sequence, TypeVar

from . import __version__
from .config import DEFAULT_METRICS_LABELS, METRICS_LABELS, PROBE_CHOICES, Config, OutputConfig
from .containers.selector import Selector, SelectorError
from .diagnostics import nonblocking_stderr
from .errors import TcpacceptError
from .flag_rules import host_root_warning, idle_flag_error
from .plan import RunPlan

EXAMPLES = """\
examples:
  tcpaccept                      # trace all TCP accepts, seed layout
  tcpaccept -t                   # TIME(s): seconds since tracing began (bcc -t)
  tcpaccept -x                   # add UID, NETNS, FD and CGROUP columns
  tcpaccept -l                   # add QLAT(ms): time each connection waited in the queue
  tcpaccept -j                   # one JSON object per accept
  tcpaccept -s 10                # every 10 s a table per listener; histograms at exit
  tcpaccept --drops              # also DROP lines when a listener's queue overflows
  tcpaccept --metrics 0.0.0.0:9435 -s 60   # Prometheus metrics, a summary each minute
  tcpaccept --metrics 0.0.0.0:9435 -q      # metrics only: the agent on every node
  tcpaccept -p 181,4242          # only accepts by PIDs 181 and 4242
  tcpaccept -P 80,443            # only local ports 80 and 443
  tcpaccept -4                   # only IPv4 (IPv4 clients of dual-stack listeners too)
  tcpaccept -6                   # only IPv6
  tcpaccept -u 33                # only processes of UID 33
  tcpaccept -c nginx             # only processes named nginx
  tcpaccept -N 4026531840        # only network namespace inode 4026531840
  tcpaccept --cgroup /sys/fs/cgroup/system.slice/nginx.service   # one cgroup and below
  tcpaccept -r 10.0.0.0/8,fd00::/8                               # only these clients
  tcpaccept --cgroupmap /sys/fs/bpf/test01   # bcc: only cgroups in this pinned map
  tcpaccept --mntnsmap /sys/fs/bpf/mnt_ns    # bcc: only mount namespaces in this map
  tcpaccept --container web,3f4e1a2b9c0d     # only these containers (name or id prefix)
  tcpaccept --k8s-namespace shop --pod web-0 # only this Kubernetes pod
  tcpaccept -j --host-root /host             # in a container with the host's / at /host
  tcpaccept --no-unmap           # show IPv4 clients of dual-stack listeners as ::ffff:a.b.c.d
  tcpaccept -n 10                # stop after 10 accepts
  tcpaccept -d 30                # stop after 30 seconds
  tcpaccept --ring-buffer 16384  # a 16 MiB kernel ring buffer for bursty hosts
  tcpaccept --probe tracepoint   # force an attach method
  tcpaccept --no-io-uring        # tracepoint method without the io_uring completion hook
  tcpaccept --check              # what works on this kernel, and what auto would pick
"""

T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """Bad flags: one line on stderr and exit 2, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _list_of(parse: Callable[[str], T], what: str) -> Callable[[str], frozenset]:
    def parse_list(text: str) -> frozenset:
        items = [part.strip() for part in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"empty item in {what} list {text!r}")
        # How many fit is the BPF object's to say: the tracer checks its maps' sizes.
        return frozenset(parse(item) for item in items)

    return parse_list


# Plain ASCII digits only: int() and float() also take "80_80", "\u0668\u0660" (Arabic-Indic
# digits), "1e3", "inf" and surrounding spaces, none of which anyone means as a port or PID.
_ASCII_INT = re.compile(r"[0-9]+")
_ASCII_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not _ASCII_INT.fullmatch(text):
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r} (digits 0-9 only)")
        # int() of thousands of digits is refused (or slow): no range here needs 30.
        value = int(text, 10) if len(text) <= 30 else high + 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} {text} out of range {low}..{high}")
        return value

    return parse


# About 31 years: any longer is a typo, and far past what a float deadline keeps exact.
MAX_SECONDS = 1e9


def _positive_float(what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        if not _ASCII_DECIMAL.fullmatch(text):
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r} (a decimal number)")
        value = float(text)
        if not 0 < value < MAX_SECONDS:
            raise argparse.ArgumentTypeError(
                f"{what} {text} out of range: more than 0 and less than {MAX_SECONDS:.0f} s")
        return value

    return parse


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid address range {text!r}") from None


def _comm(text: str) -> str:
    # The kernel keeps 15 bytes of a task's name: a longer filter could never match.
    if not text or len(text.encode()) > 15:
        raise argparse.ArgumentTypeError(f"command name {text!r} must be 1 to 15 bytes")
    return text


def _existing(kind: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            os.stat(text)
        except PermissionError:  # bpffs is 0700 root: not "missing" for another user
            raise argparse.ArgumentTypeError(f"{kind} {text!r}: permission denied (the pin "
                                             "needs read access, e.g. root)") from None
        except OSError:
            raise argparse.ArgumentTypeError(f"{kind} {text!r} does not exist") from None
        return text

    return parse


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        if not _ASCII_INT.fullmatch(port):
            raise ValueError(port)
        number = int(port)
        address = ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid [ADDR:]PORT {text!r}") from None
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} out of range 1..65535")
    # A server binds a unicast address (or the wildcard); these would only fail at bind.
    if address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
        raise argparse.ArgumentTypeError(
            f"{host} is a multicast or broadcast address: give a unicast one (or 0.0.0.0)")
    return host, number


def _readable_file(kind: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not os.path.isfile(text):
            raise argparse.ArgumentTypeError(f"{kind} {text!r} is not a file")
        try:
            with open(text, "rb"):
                pass
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {kind} {text!r}: "
                                             f"{exc.strerror}") from None
        return text

    return parse


def _metrics_labels(text: str) -> tuple[str, ...]:
    labels = tuple(part.strip() for part in text.split(","))
    unknown = [label for label in labels if label not in METRICS_LABELS]
    if unknown or not labels:
        raise argparse.ArgumentTypeError(
            f"unknown label {unknown[0] if unknown else repr(text)}: choose from "
            f"{','.join(METRICS_LABELS)}")
    if len(set(labels)) != len(labels):
        raise argparse.ArgumentTypeError(f"a label is given twice in {text!r}")
    return labels


def _directory(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: not a directory")
    return text


def _ring_kib(text: str) -> int:
    size = _int_in(4, 1 << 20, "ring buffer size (KiB)")(text)
    # The kernel wants a power-of-two number of pages.
    if size & (size - 1):
        raise argparse.ArgumentTypeError(f"ring buffer size {text} KiB is not a power of two")
    return size


def _cgroup_dir(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"cgroup {text!r} is not a directory")
    # cgroup.controllers exists in every v2 directory and in no v1 one (a v1 directory
    # would only fail later, at map update, as "no attach method works").
    if not os.path.exists(os.path.join(text, "cgroup.controllers")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a cgroup v2 directory")
    return text


pid_list = _list_of(_int_in(1, 4194304, "PID"), "PID")
port_list = _list_of(_int_in(1, 65535, "port"), "port")


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="tcpaccept",
        description="Trace passive TCP connections (accept()) with eBPF.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    out = p.add_argument_group("output")
    out.add_argument("-T", "--time", action="store_true",
                     help="TIME column, HH:MM:SS (the default layout has it; with -t, both)")
    out.add_argument("-t", "--timestamp", action="store_true",
                     help="TIME(s): seconds since tracing began instead of HH:MM:SS")
    out.add_argument("-j", "--json", action="store_true", help="one JSON object per line")
    out.add_argument("-x", "--extended", action="store_true",
                     help="add UID, NETNS, FD and CGROUP (v2 path) columns")
    out.add_argument("-l", "--latency", action="store_true",
                     help="add QLAT(ms): time from ESTABLISHED to accept()")
    out.add_argument("-s", "--summary", nargs="?", const=5.0, default=None,
                     type=_positive_float("summary interval"), metavar="SECONDS",
                     help="instead of one line per accept, a table per listener every "
                          "SECONDS (default 5) and a queue-latency histogram at exit")
    out.add_argument("--drops", action="store_true",
                     help="also report listener overflows (DROP lines / drop objects), "
                          "sampled every second")
    out.add_argument("--metrics", type=_listen_address, metavar="[ADDR:]PORT",
                     help="serve Prometheus metrics on ADDR:PORT (ADDR defaults to 127.0.0.1)")
    out.add_argument("--metrics-tls-cert", type=_readable_file("TLS certificate"),
                     metavar="FILE", help="serve --metrics over HTTPS with this certificate "
                                          "(PEM; needs --metrics-tls-key)")
    out.add_argument("--metrics-tls-key", type=_readable_file("TLS key"), metavar="FILE",
                     help="the certificate's private key (PEM, unencrypted)")
    out.add_argument("--metrics-labels", type=_metrics_labels, metavar="LABEL[,...]",
                     help=f"labels of each listener's series, from {','.join(METRICS_LABELS)} "
                          f"(default {','.join(DEFAULT_METRICS_LABELS)}; comm: one series "
                          "per process name, which any process can change); needs --metrics")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="print no accept lines (with --metrics: the always-on agent mode; "
                          "with --drops: DROP lines only)")
    out.add_argument("--no-unmap", dest="unmap", action="store_false",
                     help="show IPv4 clients of dual-stack listeners as ::ffff:a.b.c.d")
    out.add_argument("-v", "--verbose", action="store_true",
                     help="say which attach method is used and why others are not; libbpf log")

    flt = p.add_argument_group("filters (all run in the kernel)")
    flt.add_argument("-p", "--pid", type=pid_list, metavar="PID[,PID...]",
                     help="only these process IDs")
    flt.add_argument("-P", "--port", type=port_list, metavar="PORT[,PORT...]",
                     help="only these local ports")
    family = flt.add_mutually_exclusive_group()
    family.add_argument("-4", "--ipv4", action="store_true", help="only IPv4 clients")
    family.add_argument("-6", "--ipv6", action="store_true", help="only IPv6 clients")
    flt.add_argument("-u", "--uid", type=_int_in(0, 2**32 - 2, "UID"), help="only this UID")
    flt.add_argument("-c", "--comm", type=_comm, metavar="NAME", help="only this process name")
    flt.add_argument("-N", "--netns", type=_int_in(1, 2**32 - 1, "netns inode"),
                     metavar="INODE", help="only this network namespace (inode number)")
    flt.add_argument("--cgroup", type=_cgroup_dir, metavar="PATH",
                     help="only processes in this cgroup v2 directory or below it")
    flt.add_argument("-r", "--remote", type=_list_of(_network, "address range"),
                     metavar="CIDR[,CIDR...]", help="only clients in these address ranges")
    flt.add_argument("--cgroupmap", type=_existing("pinned map"), metavar="PATH",
                     help="only cgroups in this pinned BPF hash (bcc)")
    flt.add_argument("--mntnsmap", type=_existing("pinned map"), metavar="PATH",
                     help="only mount namespaces in this pinned BPF hash (bcc)")
    flt.add_argument("--container", metavar="NAME|ID[,...]",
                     help="only these containers (name, or id prefix of >= 12 hex digits); "
                          "containers started later are matched too")
    flt.add_argument("--pod", metavar="NAME[,...]", help="only these Kubernetes pods")
    flt.add_argument("--k8s-namespace", metavar="NS[,...]",
                     help="only pods in these Kubernetes namespaces")

    run = p.add_argument_group("running")
    run.add_argument("-d", "--duration", type=_positive_float("duration"), metavar="SECONDS",
                     help="stop after this many seconds")
    run.add_argument("-n", "--count", type=_int_in(1, 2**63 - 1, "count"), metavar="N",
                     help="stop after N accepts")
    run.add_argument("--probe", choices=PROBE_CHOICES, default="auto",
                     help="attach method (default: the best that works here)")
    run.add_argument("--no-io-uring", dest="io_uring", action="store_false",
                     help="tracepoint method: do not hook io_uring completions (io_uring "
                          "accepts are then not seen; fexit/kprobe see them regardless)")
    run.add_argument("--host-root", type=_directory, default="/", metavar="DIR",
                     help="where the host's / is mounted when tcpaccept runs in a container "
                          "(cgroups, /proc and the container runtimes' state are read there)")
    run.add_argument("--ring-buffer", type=_ring_kib, default=4096, metavar="KIB",
                     help="kernel ring buffer size in KiB, a power of two >= 4 (default "
                          "4096: ~37k events of headroom); for printed lines only (-s and "
                          "--metrics -q use one page)")
    run.add_argument("--check", action="store_true",
                     help="print what works on this kernel and exit")
    run.add_argument("--version", action="version", version=f"tcpaccept {__version__}")
    # -4 and -6 look like negative numbers, so argparse would read "-P -1" as a missing
    # value ("expected one argument", no value named); this way -1 reaches the range check.
    p._has_negative_number_optionals.clear()
    return p


def configs_from(args: argparse.Namespace) -> tuple[Config, OutputConfig]:
    family = 4 if args.ipv4 else 6 if args.ipv6 else None
    output = OutputConfig(
        json=args.json,
        relative_time=args.timestamp,
        clock_time=args.time,
        extended=args.extended,
        latency=args.latency,
        unmap_ipv4=args.unmap,
        count=args.count,
        duration=args.duration,
        verbose=args.verbose,
        summary_interval=args.summary,
        drops=args.drops,
        metrics=args.metrics,
        metrics_tls_cert=args.metrics_tls_cert,
        metrics_tls_key=args.metrics_tls_key,
        quiet=args.quiet,
        metrics_labels=args.metrics_labels or DEFAULT_METRICS_LABELS,
    )
    config = Config(
        pids=args.pid or frozenset(),
        lports=args.port or frozenset(),
        uid=args.uid,
        comm=args.comm,
        netns=args.netns,
        cgroup=args.cgroup,
        cgroupmap=args.cgroupmap,
        mntnsmap=args.mntnsmap,
        remotes=tuple(sorted(args.remote or (), key=str)),
        family=family,
        probe=args.probe,
        ring_buffer_bytes=args.ring_buffer * 1024,
        queue_latency=RunPlan.of(output).queue_latency,
        io_uring=args.io_uring,
        containers=Selector.from_flags(args.container, args.pod, args.k8s_namespace),
        host_root=args.host_root,
    )
    return config, output


def check_combinations(parser: OneLineParser, args: argparse.Namespace) -> None:
    """Flags that are fine alone but not together (or not alone): parser.error, exit 2."""
    if bool(args.metrics_tls_cert) != bool(args.metrics_tls_key):
        parser.error("--metrics-tls-cert and --metrics-tls-key go together: give both")
    if args.metrics_tls_cert and not args.metrics:
        parser.error("--metrics-tls-cert/--metrics-tls-key need --metrics [ADDR:]PORT")
    idle = idle_flag_error(args)
    if idle:
        parser.error(idle)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_combinations(parser, args)
    warning = host_root_warning(args.host_root)
    if warning:
        print(f"tcpaccept: warning: {warning}", file=sys.stderr, flush=True)
    from .session import check_report, trace  # deferred: --help needs no libbpf

    try:
        config, output = configs_from(args)
    except SelectorError as exc:
        parser.error(str(exc))
    if args.check:
        try:
            return check_report(sys.stdout, verbose=args.verbose)
        except TcpacceptError as exc:
            print(f"tcpaccept: {exc}", file=sys.stderr)
            return exc.exit_code
    with nonblocking_stderr():  # a stalled stderr never holds the loop or SIGTERM
        try:
            return trace(config, output)
        except TcpacceptError as exc:
            print(f"tcpaccept: {exc}", file=sys.stderr)
            return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
