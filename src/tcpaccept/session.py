"""Wires a Config to a Tracer and an output sink, with the CLI's error and exit handling."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Optional, TextIO

from . import libbpf, preflight, probes
from .cgroups import CgroupPaths
from .config import Config, OutputConfig
from .drops import DropMonitorError, DropReport, ListenerDropMonitor
from .errors import TcpacceptError
from .event import Decoder
from .output.json_lines import JsonFormatter
from .output.text import TextFormatter
from .run import BANNER, LineSink, Sink, StopFlag, run, silence_stdout
from .summary import SummarySink
from .tracer import Tracer


def _stderr_logger(verbose: bool):
    def log(message: str) -> None:
        if verbose:
            print(f"tcpaccept: {message}", file=sys.stderr, flush=True)

    return log


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


def build_sink(output: OutputConfig, decoder: Decoder, out: TextIO, start_ns: int) -> Sink:
    if output.summary_interval:
        return SummarySink(decoder, out, output.summary_interval, output.json)
    cgroup_path = CgroupPaths() if output.extended else None
    if output.json:
        formatter = JsonFormatter(cgroup_path)
        return LineSink(decoder, formatter.line, out, drop_line=formatter.drop_line)
    text = TextFormatter(
        relative_to_ns=start_ns if output.relative_time else None,
        extended=output.extended,
        latency=output.latency,
        cgroup_path=cgroup_path,
        both_times=output.clock_time,
    )
    return LineSink(decoder, text.line, out, header=text.header(), drop_line=text.drop_line)


class FilteredDrops:
    """Listener drops for the processes the user asked about (ports filter in netlink)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.monitor = ListenerDropMonitor(ports=config.lports or None)
        self.monitor.poll()  # the baseline: drops from before tracing are not reported

    def _wanted(self, reports: list[DropReport]) -> list[DropReport]:
        c = self.config
        return [r for r in reports
                if (not c.pids or r.pid in c.pids) and (c.comm is None or r.comm == c.comm)]

    def poll(self) -> list[DropReport]:
        return self._wanted(self.monitor.poll())

    def flush(self) -> list[DropReport]:
        reports = self._wanted(self.monitor.flush())
        self.monitor.close()
        return reports


def _with_metrics(sink: Sink, decoder: Decoder, address: tuple[str, int],
                  tracer: Tracer) -> Sink:
    from .metrics import MetricsTee  # prometheus_client costs 50 ms to import: only here

    try:
        return MetricsTee(sink, decoder, address[0], address[1], tracer.lost_events)
    except OSError as exc:
        raise TcpacceptError(
            f"--metrics {address[0]}:{address[1]}: cannot listen: {exc.strerror}"
        ) from None


def trace(config: Config, output: OutputConfig, out: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    _prepare(output.verbose)
    stop = StopFlag()
    stop.install()
    decoder = Decoder(unmap_ipv4=output.unmap_ipv4)
    messages = sys.stderr if output.json else out
    try:
        with Tracer(config, _stderr_logger(output.verbose)) as tracer:
            start_ns = time.time_ns()
            sink = build_sink(output, decoder, out, start_ns)
            if output.metrics:
                sink = _with_metrics(sink, decoder, output.metrics, tracer)
            drops = None
            if output.drops or output.summary_interval:
                try:
                    # Its baseline is taken now: every drop after the banner is reported.
                    drops = FilteredDrops(config)
                except DropMonitorError as exc:
                    raise TcpacceptError(f"cannot watch listener drops: {exc}") from None
            print(BANNER, file=messages, flush=True)
            sink.start()
            run(tracer, sink, sys.stderr, stop, count=output.count, duration=output.duration,
                drops=drops)
    except BrokenPipeError:
        silence_stdout()
    return 0


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
            out.write(f"{method}: usable\n")
        except TcpacceptError:
            out.write(f"{method}: not usable: {tracer.rejected.get(method, 'unknown')}\n")
        finally:
            tracer.close()
    out.write(f"auto would pick: {usable[0] if usable else 'none'}\n")
    return 0 if usable else 1
