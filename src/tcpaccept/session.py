"""Wires a Config to a Tracer, a drop monitor, the sinks and the metrics server.

One owner: every resource is entered into one ExitStack in ``trace``, so whatever fails,
everything opened so far is closed in reverse order. Expected failures become a
TcpacceptError (one line, an exit code) for ``cli.main``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import sys
import time
from typing import TYPE_CHECKING, Callable, Optional, Sequence, TextIO

from . import iouring, libbpf, preflight, privileges, probes
from .aggregate import AggregateReader
from .config import Config, OutputConfig
from .drops import DropMonitorError, ListenerDropMonitor
from .drops.table_monitor import TableDropMonitor
from .errors import TcpacceptError
from .listeners import (
    ListenerState,
    ListenerWatch,
    ListenerWatchError,
    Snapshot,
    outside_host_pid_namespace_warning,
)
from .model import Container, Drop, Lost
from .output.clock import WallClock
from .output.json_lines import JsonFormatter
from .output.lines import CLOSE_IDLE_S, CLOSE_TIMEOUT_S, LineSink, Output, TextOutput
from .output.text import TextFormatter
from .output.writer import BufferedText, OutputWriter
from .pidns import pid_namespace_notice
from .plan import DropPolicy, RunPlan
from .run import BANNER, DropSource, StopFlag, run
from .sink import LostNotices, Sink, Tee
from .snapshot import ListenerTable
from .summary import SummarySink
from .tracer import Tracer

if TYPE_CHECKING:  # imported where they are used: most runs need neither
    from .containers import ContainerResolver
    from .metrics import MetricsSink


def _stderr_logger(verbose: bool) -> Callable[[str], None]:
    def log(message: str) -> None:
        if verbose:
            print(f"tcpaccept: {message}", file=sys.stderr, flush=True)

    return log


def _warn(message: str) -> None:
    print(f"tcpaccept: warning: {message}", file=sys.stderr, flush=True)


def _warn_if(message: Optional[str]) -> None:
    if message:
        _warn(message)


def _prepare(verbose: bool, kernel_checks: bool = True) -> None:
    """Fail early and clearly; libbpf's own log only shows with --verbose."""
    log = _stderr_logger(verbose)
    preflight.check_privileges()
    if kernel_checks:
        preflight.check_kernel()
    preflight.raise_memlock(log)
    try:
        libbpf.lib()
    except libbpf.LibbpfMissing as exc:
        raise TcpacceptError(str(exc)) from None
    libbpf.set_print((lambda _level, line: log(f"libbpf: {line}")) if verbose else None)


def build_output_sink(output: OutputConfig, out: Output, start_ns: int,
                      resolver: Optional[ContainerResolver] = None,
                      aggregates: Optional[AggregateReader] = None,
                      table: Optional[ListenerTable] = None,
                      stalls_to: Optional[Callable[[Lost], None]] = None) -> Sink:
    """The sink that prints: summary tables, JSON lines or the seed's text lines."""
    notices = LostNotices(sys.stderr, stalls_to)
    if output.summary_interval:
        if aggregates is None:
            raise TcpacceptError("summary mode needs the tracer's aggregation maps")
        return SummarySink(BufferedText(out, notices), output.summary_interval, output.json,
                           notices, aggregates, resolver.resolve if resolver else None,
                           table=table)
    cgroup_path = None
    if output.extended and resolver is not None:
        def cgroup_path(cgroup_id: int) -> str:
            return resolver.cgroup_path(cgroup_id) or f"cgroup:{cgroup_id}"
    if output.json:
        formatter = JsonFormatter(cgroup_path)
        return LineSink(out, notices, None if output.quiet else formatter.line,
                        drop_line=formatter.drop_line if output.drops else None)
    text = TextFormatter(
        relative_to_ns=start_ns if output.relative_time else None,
        extended=output.extended,
        latency=output.latency,
        cgroup_path=cgroup_path,
        both_times=output.clock_time,
    )
    return LineSink(out, notices, None if output.quiet else text.line,
                    header=text.header(), drop_line=text.drop_line if output.drops else None)


class FilteredDrops:
    """Listener drops for the processes (and containers) the user asked about, named with
    their owner's container (ports filter in netlink already)."""

    def __init__(self, config: Config, monitor: DropSource,
                 resolver: Optional[ContainerResolver]) -> None:
        self.config = config
        self.monitor = monitor
        self.resolver = resolver
        self.monitor.poll()  # the baseline: drops from before tracing are not reported
        self.poll_interval_s = monitor.poll_interval_s

    def _wanted(self, reports: Sequence[Drop]) -> list[Drop]:
        c = self.config
        wanted = [r for r in reports
                  if (not c.pids or r.pid in c.pids) and (c.comm is None or r.comm == c.comm)
                  and (c.netns is None or r.netns == c.netns)]
        if self.resolver is not None:
            for_pid = self.resolver.for_pid
            wanted = [dataclasses.replace(r, container=for_pid(r.pid))
                      if r.pid is not None else r for r in wanted]
        if c.containers:
            wanted = [r for r in wanted if c.containers.matches(r.container)]
        return wanted

    def wants_socket(self, s: ListenerState, container: Optional[Container]) -> bool:
        """The same filters for a listening socket of the table (metrics, summary)."""
        c = self.config
        return ((not c.lports or s.lport in c.lports) and (not c.pids or s.pid in c.pids)
                and (c.comm is None or s.comm == c.comm)
                and (c.netns is None or s.netns == c.netns)
                and (not c.containers or c.containers.matches(container)))

    def poll(self) -> list[Drop]:
        return self._wanted(self.monitor.poll())

    def flush(self) -> list[Drop]:
        return self._wanted(self.monitor.flush())

    def warnings(self) -> list[str]:
        return self.monitor.warnings()

    def listeners(self) -> Optional[Snapshot]:
        """The latest listener table (every listener, not filtered); None on the sock_diag
        fallback, which keeps no table."""
        return self.monitor.listeners() if isinstance(self.monitor, TableDropMonitor) else None


def _metrics_server(metrics: MetricsSink, output: OutputConfig
                    ) -> contextlib.AbstractContextManager:
    from .metrics_server import MetricsServer, warn_if_exposed

    assert output.metrics is not None
    address, port = output.metrics
    try:
        server = MetricsServer(address, port, metrics.registry, output.metrics_tls_cert,
                               output.metrics_tls_key, source=metrics)
    except OSError as exc:
        raise TcpacceptError(f"--metrics {address}:{port}: cannot listen: "
                             f"{exc.strerror or exc}") from None
    warn_if_exposed(address, port, sys.stderr)
    return server


def _open_drop_monitor(config: Config) -> TableDropMonitor | ListenerDropMonitor:
    """The kernel's listener table (every network namespace, owners, with CAP_BPF +
    CAP_PERFMON); sock_diag where the kernel has no usable task_file iterator (before 5.8,
    or without the fields it reads): one line says which and why."""
    ports = frozenset(config.lports) if config.lports else None
    try:
        watch = ListenerWatch()
    except ListenerWatchError as exc:
        return _sock_diag_monitor(ports, str(exc))
    try:
        watch.start()  # the baseline read
    except ListenerWatchError as exc:
        watch.close()
        return _sock_diag_monitor(ports, str(exc))
    hidden = outside_host_pid_namespace_warning()
    if hidden:
        _warn(f"listener table: {hidden}")
    return TableDropMonitor(watch, ports)


def _sock_diag_monitor(ports: Optional[frozenset[int]], why: str) -> ListenerDropMonitor:
    _warn(f"listener drops through sock_diag: the listener iterator is not usable ({why})")
    try:
        monitor = ListenerDropMonitor(ports=ports)
    except DropMonitorError as exc:
        raise TcpacceptError(f"cannot watch listener drops: {exc}") from None
    _warn_if(privileges.drops_warning())  # sock_diag's privileges, not the iterator's
    return monitor


def _open_output(out: Optional[TextIO], on_closed: Callable[[], None]) -> Output:
    """stdout through the writer thread (a stalled reader never blocks the loop or the
    signals; a reader gone calls on_closed at once); a caller's TextIO (tests, benchmarks)
    directly."""
    if out is not None:
        return TextOutput(out)
    sys.stdout.flush()
    return OutputWriter(sys.stdout.fileno(), on_closed=on_closed)


def _finish_output(lines_out: Output) -> None:
    """Give queued lines (summary tables at exit) a moment to reach a reader that reads;
    the tables that never got out are said, like events."""
    try:
        lines_out.flush(CLOSE_TIMEOUT_S, idle_s=CLOSE_IDLE_S)
    finally:
        lines_out.close()
        dropped = lines_out.dropped_reports()
        if dropped:
            print(f"Lost {dropped} summaries (output stalled)", file=sys.stderr, flush=True)


def trace(config: Config, output: OutputConfig, out: Optional[TextIO] = None) -> int:
    _prepare(output.verbose)
    stop = StopFlag()
    stop.install()
    try:
        with contextlib.ExitStack() as owned:
            plan = RunPlan.of(output, config)
            # Summary and metrics count in the kernel; records only for printed lines.
            tracer = owned.enter_context(Tracer(
                config, _stderr_logger(output.verbose), aggregate=plan.aggregate,
                emit_records=plan.emit_records, aggregate_remotes=plan.aggregate_remotes))
            aggregates = AggregateReader(tracer) if plan.aggregate else None
            if tracer.pid_namespace is not None:  # PIDs are not the host's: say whose
                print(f"tcpaccept: {pid_namespace_notice(tracer.pid_namespace)}",
                      file=sys.stderr, flush=True)
            # The resolver lives on this thread only (the loop, the listener table);
            # imported only when names are printed.
            resolver = None
            if plan.resolve_containers:
                from .containers import ContainerResolver
                resolver = owned.enter_context(contextlib.closing(
                    ContainerResolver(host_root=config.host_root)))
            if resolver is not None:  # names need root-only state directories
                _warn_if(privileges.container_names_warning(config.host_root))
            # One listener table for the summary and the metrics: one owner of the TTL.
            table = (ListenerTable(aggregates, container_of=resolver.resolve if resolver
                                   else None) if aggregates is not None else None)
            decoder = tracer.decoder(unmap_ipv4=output.unmap_ipv4,
                                     container_of=resolver.resolve if resolver else None)
            # The wall clock can be stepped (NTP, an operator) during a long run: re-read
            # the monotonic->wall offset every 2 s (WallClock decides; checked each second).
            clock = WallClock()

            def reanchor_clock() -> None:
                decoder.boot_to_wall_ns = clock.offset_ns()

            chores = [reanchor_clock]
            if config.containers and resolver is not None:
                def refresh_container_filter() -> None:
                    tracer.set_container_cgroups(resolver.cgroup_ids_for(config.containers))

                refresh_container_filter()  # before the banner: what is running now is seen
                chores.append(refresh_container_filter)
            if config.cgroup:
                def follow_cgroup() -> None:
                    warning = tracer.follow_cgroup()
                    if warning:
                        _warn(warning)

                chores.append(follow_cgroup)
            drops = None
            if plan.drops is not DropPolicy.NONE:
                # Its baseline is taken now: every drop after the banner is reported.
                # --metrics counts drops too (the agent's drop alert), but there a monitor
                # that cannot start is a warning, not the end: accepts still count.
                try:
                    monitor = owned.enter_context(_open_drop_monitor(config))
                    drops = FilteredDrops(config, monitor, resolver)
                except TcpacceptError as exc:
                    if plan.drops is DropPolicy.REQUIRED:
                        raise
                    _warn(f"{exc}; tcpaccept_listen_drops_total stays empty")
            if table is not None and drops is not None and drops.listeners() is not None:
                # Every listening socket into the one table (the tick copies the watch's
                # latest read): metrics for listeners that never accepted, drops from 0.
                table.sockets_source, table.socket_wanted = drops.listeners, drops.wants_socket
                table.owner_container = resolver.for_pid if resolver else None
            preflight.return_freed_heap()  # every BPF object is loaded now
            sinks: list[Sink] = []
            metrics = None
            if plan.metrics:
                from .metrics import MetricsSink  # prometheus_client costs 50 ms to import

                assert table is not None
                metrics = MetricsSink(table, output.metrics_labels)
                owned.enter_context(_metrics_server(metrics, output))
                sinks.append(metrics)
            lines_out = _open_output(out, stop.request)
            owned.callback(_finish_output, lines_out)  # after the sinks' last words
            # Only JSON (or nothing, with --quiet) goes to stdout; the banner then goes to
            # stderr. On stdout it goes through the writer: a stalled reader never holds us.
            if output.json or output.quiet:
                print(BANNER, file=sys.stderr, flush=True)
            else:
                lines_out.write_lines(BANNER + "\n", 0)
            sinks.append(build_output_sink(output, lines_out, time.time_ns(), resolver,
                                           aggregates, table,
                                           metrics.count_lost if metrics else None))
            sink = owned.enter_context(contextlib.closing(
                sinks[0] if len(sinks) == 1 else Tee(*sinks)))

            def report_probe_misses() -> None:  # the kprobe method's blind spot, counted
                missed = tracer.new_probe_misses()
                if missed:
                    sink.handle([Lost(missed, "kretprobe missed")])

            chores.append(report_probe_misses)
            run(tracer, decoder.decode, sink, stop, _warn, count=output.count,
                duration=output.duration, drops=drops, every_second=chores)
            report_probe_misses()  # the last second's
            hidden = tracer.outside_pid_namespace()
            if hidden:
                print(f"tcpaccept: {hidden} accepts by processes outside pid namespace "
                      f"{tracer.pid_namespace} were not shown", file=sys.stderr, flush=True)
    except BrokenPipeError:
        silence_stdout()
    except libbpf.LibbpfError as exc:  # a ring-buffer poll failing mid-run
        raise TcpacceptError(str(exc)) from None
    return 0


def silence_stdout() -> None:
    """After EPIPE (`| head -1`): point stdout at /dev/null so the exit flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _listener_table_check_line(verbose: bool) -> str:
    """What --drops, -s and --metrics read listener state from, and what that one misses."""
    try:
        with ListenerWatch() as watch:
            snapshot = watch.refresh()
    except ListenerWatchError as exc:
        return f"listener table: not usable ({exc}): drops through sock_diag"
    line = "listener table: usable (task_file iterator)"
    if verbose:
        line += (f", {len(snapshot.listeners)} listeners, one read "
                 f"{snapshot.read_cost_s * 1e3:.1f} ms, read every {watch.interval_s:g} s")
    hidden = outside_host_pid_namespace_warning()
    return f"{line}; {hidden}" if hidden else line


def check_report(out: TextIO, verbose: bool = False) -> int:
    """--check: each method usable or why not; kernel, BTF, libbpf; what auto would pick."""
    _prepare(verbose, kernel_checks=False)  # --check reports what is missing, in full
    out.write(f"kernel: {platform.release()}\n")
    out.write(f"BTF: {'yes' if os.path.exists(preflight.BTF_PATH) else 'no'}\n")
    out.write(f"libbpf: {libbpf.version()}\n")
    try:
        preflight.check_kernel()
    except TcpacceptError as exc:
        out.write(f"unsupported: {exc}\n")
        out.write("auto would pick: none\n")
        return 1
    usable = []
    for method in probes.METHODS:
        tracer = Tracer(Config(probe=method))
        try:
            tracer.start()
            usable.append(method)
            where = probes.syscall_tracepoints_unattachable() if method == "tracepoint" else None
            out.write(f"{method}: usable" + (f" at sys_exit, not through tracefs ({where})"
                                              if where else "") + "\n")
        except TcpacceptError:
            out.write(f"{method}: not usable: {tracer.rejected.get(method, 'unknown')}\n")
        finally:
            tracer.close()
    out.write(iouring.support().check_line() + "\n")
    out.write(_listener_table_check_line(verbose) + "\n")
    out.write(f"auto would pick: {usable[0] if usable else 'none'}\n")
    return 0 if usable else 1
