#!/usr/bin/env python3
"""Issue 5's benchmark: what tracing accept() costs a busy server, whether every accept is
printed, how fast the user-space pipeline is, and how quickly/leanly the tracer starts.

    python bench/run.py [--rounds 5] [--seconds 10] [--json out.json] [--quick]

Stdlib only, plus the project's own package (taken from src/ when not installed). Needs
root; installs nginx-light, wrk, bpftrace and bpftool from Debian if they are missing.
See bench/README.md for what each figure means.

Exit status: 0 when everything worked (missed performance targets are reported, not
fatal); 1 when something is broken: tcpaccept did not start or exited with an error, a
counted run printed no events, lost events, or printed a different number of events than
nginx accepted; 2 when the bench itself could not run (no nginx, no load, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PEER_SCRIPT = BENCH / "peer_tcpaccept.bt"
DEFAULT_JSON = BENCH / "results" / "latest.json"
DEFAULT_TOOL = REPO / ".venv" / "bin" / "tcpaccept"

try:
    import tcpaccept  # noqa: F401
except ImportError:  # run with a Python outside the venv: use the work tree's package
    sys.path.insert(0, str(REPO / "src"))

from tcpaccept.event import RECORD, Decoder, encode  # noqa: E402
from tcpaccept.output.json_lines import JsonFormatter  # noqa: E402
from tcpaccept.output.text import TextFormatter  # noqa: E402
from tcpaccept.run import BANNER, LineSink  # noqa: E402

# Targets from issue 5. Performance targets never change the exit status.
TARGET_TEXT_EPS = 300_000
TARGET_JSON_EPS = 200_000
TARGET_START_S = 0.2
TARGET_RSS_MB = 40.0
# Issue 5's targets for traced/untraced request rate; also never below the peer's.
TARGET_RATIO = {"text": 0.97, "json": 0.95}

# The syscall-exit tracepoints both tools attach to on this kind of kernel.
ACCEPT_TRACEPOINTS = {"sys_exit_accept4", "sys_exit_accept"}
STATUS_PATH = "/status"
LOST_RE = re.compile(r"Lost (\d+) events( in total)?")


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The bench itself cannot go on (exit 2)."""


# --------------------------------------------------------------------------- dependencies

def ensure_tools(tool: Path) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: tracing needs it")
    wanted = {"nginx": "nginx-light", "wrk": "wrk", "bpftrace": "bpftrace", "bpftool": "bpftool"}
    missing = [pkg for cmd, pkg in wanted.items() if not _which(cmd)]
    if missing:
        log(f"installing {' '.join(missing)} (Debian's nginx-light also starts a system "
            "nginx on :80; the bench leaves it alone and uses its own port)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    if not tool.exists():
        raise BenchError(f"{tool} not found: run `bash scripts/setup.sh --test` first")


def _which(cmd: str) -> Optional[str]:
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/usr/bin:/sbin:/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------- nginx

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = {status} {{ stub_status; }}
        location / {{ return 204; }}
    }}
}}
"""


class Nginx:
    """Our own nginx in a temp dir: one worker, 204 for every request, stub_status."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "nginx"
        self.dir.mkdir()
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.pids: set[int] = set()

    def start(self) -> None:
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.dir, port=self.port, status=STATUS_PATH))
        with open(self.dir / "stderr", "wb") as stderr:
            self.proc = subprocess.Popen(
                [_which("nginx"), "-p", str(self.dir), "-c", str(conf), "-e",
                 str(self.dir / "error.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"nginx exited: {self._errors()}")
            try:
                self.accepts()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"nginx does not answer: {self._errors()}") from None
                time.sleep(0.05)
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        self.pids = {self.proc.pid, *map(int, children.split())}

    def _errors(self) -> str:
        text = ""
        for name in ("stderr", "error.log"):
            path = self.dir / name
            if path.exists():
                text += path.read_text(errors="replace")
        return text.strip()[-500:] or "(no message)"

    def accepts(self) -> int:
        """stub_status 'accepts' (this request's own connection included)."""
        url = f"http://127.0.0.1:{self.port}{STATUS_PATH}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = reply.read().decode()
        # Active connections: 1 \n server accepts handled requests\n 12 12 12 \n ...
        return int(body.splitlines()[2].split()[0])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: master stops its worker
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids - {self.proc.pid}:  # a worker outliving its master
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------ load

@dataclass
class Load:
    rate: float  # requests/s, as wrk reports
    requests: int
    errors: int  # socket errors + non-2xx/3xx
    output: str


def run_wrk(port: int, seconds: int) -> Load:
    cmd = [_which("wrk"), "-t2", "-c50", f"-d{seconds}s", "-H", "Connection: close",
           f"http://127.0.0.1:{port}/"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if proc.returncode != 0 or not rate or not total:
        raise BenchError(f"wrk failed (exit {proc.returncode}): {out.strip()[-400:]}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return Load(float(rate.group(1)), int(total.group(1)), errors, out)


# --------------------------------------------------------------------------------- tracers

@dataclass(frozen=True)
class Variant:
    name: str
    tracer: Optional[str]  # None, "text", "json" or "peer"
    counted: bool  # stdout to a file whose lines are counted afterwards, else /dev/null

    def command(self, tool: Path) -> list[str]:
        if self.tracer == "peer":
            return [_which("bpftrace"), str(PEER_SCRIPT)]
        return [str(tool)] + (["--json"] if self.tracer == "json" else [])

    @property
    def banner_stream(self) -> str:
        # tcpaccept prints its banner on stdout in text mode, on stderr with --json; the
        # peer's BEGIN prints it on stdout.
        return "stderr" if self.tracer == "json" else "stdout"


UNTRACED = Variant("untraced", None, False)
VARIANTS_FULL = [
    UNTRACED,
    Variant("text", "text", False),
    Variant("json", "json", False),
    Variant("peer", "peer", False),
    Variant("text+count", "text", True),
    Variant("json+count", "json", True),
    Variant("peer+count", "peer", True),
]
# --quick: the counted runs give both the cost and the completeness figures.
VARIANTS_QUICK = [UNTRACED] + [v for v in VARIANTS_FULL if v.counted]
LABELS = {"text": "tcpaccept", "json": "tcpaccept --json", "peer": "bpftrace peer"}


def attached_tracepoints(pid: int) -> set[str]:
    """Accept tracepoints with a BPF program that process `pid` attached (bpftool perf)."""
    try:
        out = subprocess.run([_which("bpftool"), "perf", "show"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    found = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "pid" and fields[1] == str(pid):
            found.update(f for f in fields if f in ACCEPT_TRACEPOINTS)
    return found


def _has_ring_and_links(pid: int) -> bool:
    """Fallback readiness for attach methods bpftool perf cannot see (fexit): the libbpf
    ring buffer's epoll exists, and is made after every program is attached."""
    kinds = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                kinds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return "anon_inode:[eventpoll]" in kinds and kinds.count("anon_inode:bpf_link") >= 2


def vm_hwm_kb(pid: int) -> Optional[int]:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


class TracerProcess:
    """One tracer child (tcpaccept or the bpftrace peer): start, wait until it traces,
    stop with SIGINT. stdout goes to /dev/null or a file, stderr to a file."""

    def __init__(self, variant: Variant, tool: Path, workdir: Path, tag: str) -> None:
        self.variant = variant
        self.cmd = variant.command(tool)
        self.out_path = workdir / f"{tag}.out" if variant.counted else None
        self.err_path = workdir / f"{tag}.err"
        self.proc: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None
        self.ready_s: Optional[float] = None
        self.hwm_kb: Optional[int] = None

    def start(self, timeout: float = 20.0) -> None:
        with contextlib.ExitStack() as files:
            stdout = (files.enter_context(open(self.out_path, "wb")) if self.out_path
                      else subprocess.DEVNULL)
            stderr = files.enter_context(open(self.err_path, "wb"))
            t0 = time.monotonic()
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=stdout,
                                         stderr=stderr, start_new_session=True)
        banner_file = (self.err_path if self.variant.banner_stream == "stderr"
                       else self.out_path)
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise TracerFailed(f"{self.name} exited with {self.proc.returncode} before "
                                   f"tracing: {self.stderr_text()[-400:]}")
            if self._ready(banner_file):
                self.ready_s = time.monotonic() - t0
                return
            if time.monotonic() > deadline:
                raise TracerFailed(f"{self.name} not tracing after {timeout:.0f} s: "
                                   f"{self.stderr_text()[-400:]}")
            time.sleep(0.01)

    def _ready(self, banner_file: Optional[Path]) -> bool:
        if banner_file is not None:  # the banner, when it can be seen, must be out
            try:
                with open(banner_file, "rb") as f:
                    if BANNER.encode() not in f.read(4096):
                        return False
            except OSError:
                return False
        # ... and, as bpftrace runs BEGIN before it attaches the other probes, the kernel
        # must list both tracepoints as attached (bpftool perf show).
        return (attached_tracepoints(self.proc.pid) >= ACCEPT_TRACEPOINTS
                or (self.variant.tracer != "peer" and _has_ring_and_links(self.proc.pid)))

    @property
    def name(self) -> str:
        return LABELS.get(self.variant.tracer or "", "tracer")

    def stop(self) -> None:
        """SIGINT (bpftrace: again every 0.5 s) until it exits; SIGKILL only as last resort."""
        proc = self.proc
        if proc is None or self.returncode is not None:
            return
        if proc.poll() is None:
            self.hwm_kb = vm_hwm_kb(proc.pid)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.5 if self.variant.tracer == "peer" else 10)
        if proc.poll() is None:
            log(f"{self.name} ignored SIGINT for 15 s: killing it")
            proc.kill()
            proc.wait()
        self.returncode = proc.returncode

    def stderr_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.err_path.read_text(errors="replace")
        return ""

    def lost(self) -> int:
        increments, total = 0, None
        for match in LOST_RE.finditer(self.stderr_text()):
            if match.group(2):
                total = int(match.group(1))
            else:
                increments += int(match.group(1))
        return max(increments, total or 0)

    def stderr_lines(self) -> list[str]:
        """stderr, less what is expected (lost-event lines; bpftrace's memlock warning)."""
        return [line for line in self.stderr_text().splitlines()
                if line.strip() and line != BANNER and not LOST_RE.search(line)
                and "RLIMIT_MEMLOCK" not in line]


class TracerFailed(Exception):
    """tcpaccept or the peer could not start or failed (a 'broken' result)."""


def count_events(variant: Variant, path: Path, pids: set[int],
                 port: int) -> tuple[int, int, int]:
    """(events from our nginx on our port, all event lines, lost events) in a counted
    tracer's output: bpftrace reports its lost events on stdout."""
    ours = total = lost = 0
    pid_texts = {str(p) for p in pids}
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("Lost "):
                match = LOST_RE.search(line)
                lost += int(match.group(1)) if match else 0
            if variant.tracer == "json":
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") != "accept":
                    continue
                total += 1
                ours += event.get("pid") in pids and event.get("lport") == port
                continue
            fields = line.split()
            # text: TIME PID COMM RADDR RPORT LADDR LPORT BL; peer: TIME PID COMM FD
            if len(fields) < 4 or not fields[1].isdigit() or line == BANNER:
                continue
            total += 1
            if variant.tracer == "text":
                ours += fields[1] in pid_texts and fields[-2] == str(port)
            else:  # the peer cannot see ports; nginx only listens on ours
                ours += fields[1] in pid_texts
    return ours, total, lost


# ----------------------------------------------------------------------- background load

PF_KTHREAD = 0x00200000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_ticks() -> dict[int, int]:
    """utime+stime of every user-space process now (kernel threads left out: ksoftirqd
    mostly does our own loopback traffic)."""
    ticks = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if int(fields[6]) & PF_KTHREAD:  # field 9, flags
            continue
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])  # fields 14, 15
    return ticks


def voluntary_switches(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


class CpuMeter:
    """CPU over the load, in cores: unrelated processes (someone's qemu, a test suite: the
    figures are noisy when it is high), the tracer, nginx; and the tracer's wakeups."""

    def __init__(self, nginx_pids: set[int], tracer_pid: Optional[int]) -> None:
        self.nginx_pids = nginx_pids
        self.tracer_pid = tracer_pid
        self.t0 = time.monotonic()
        self.before = process_cpu_ticks()
        self.switches = voluntary_switches(tracer_pid) if tracer_pid else 0

    def stop(self) -> dict:
        after = process_cpu_ticks()
        seconds = max(time.monotonic() - self.t0, 1e-3)

        def cores(pids) -> float:
            ticks = sum(after[p] - self.before[p] for p in pids
                        if p in after and p in self.before)
            return round(ticks / CLK_TCK / seconds, 3)

        ours = {os.getpid(), *self.nginx_pids, self.tracer_pid}
        return {
            "other_cpu": cores(set(self.before) - ours),
            "nginx_cpu": cores(self.nginx_pids),
            "tracer_cpu": cores({self.tracer_pid}) if self.tracer_pid else None,
            "tracer_wakeups": (voluntary_switches(self.tracer_pid) - self.switches
                               if self.tracer_pid else None),
        }


class QuietWait:
    """Before each run, wait (within a total budget) until unrelated processes use less
    than `threshold` cores: a shared 2-CPU machine running someone's qemu halves nginx."""

    def __init__(self, budget_s: float, threshold: float = 0.1) -> None:
        self.budget_s = budget_s
        self.threshold = threshold
        self.waited_s = 0.0
        self._logged_at = -1e9

    def __call__(self, ours: set[int]) -> float:
        """Waits as needed; returns the last measured background load in cores."""
        if self.budget_s <= 0:
            return 0.0
        while True:
            t0 = time.monotonic()
            before = process_cpu_ticks()
            time.sleep(0.5)
            after = process_cpu_ticks()
            ticks = sum(after[p] - before[p] for p in before
                        if p in after and p not in ours)
            load = ticks / CLK_TCK / (time.monotonic() - t0)
            if load <= self.threshold or self.waited_s >= self.budget_s:
                return load
            if time.monotonic() - self._logged_at >= 30:
                self._logged_at = time.monotonic()
                log(f"  machine busy ({load:.2f} cores used by other processes): waiting "
                    f"({self.waited_s:.0f}/{self.budget_s:.0f} s of --quiet-wait used)")
            time.sleep(2.5)
            self.waited_s += time.monotonic() - t0


# ------------------------------------------------------------------------- cost + complete

@dataclass
class RunResult:
    round: int
    position: int
    variant: str
    tracer: Optional[str]
    counted: bool
    rate: float
    requests: int
    wrk_errors: int
    nginx_accepts: int  # accepts of the load, stub_status requests excluded
    events: Optional[int] = None  # printed events for the load (counted runs only)
    events_all: Optional[int] = None  # every event line, other processes included
    lost: Optional[int] = None
    ready_s: Optional[float] = None
    hwm_kb: Optional[int] = None
    returncode: Optional[int] = None
    other_cpu: float = 0.0  # cores used by unrelated processes during the load
    nginx_cpu: float = 0.0  # cores used by nginx (the BPF programs run in its accept())
    tracer_cpu: Optional[float] = None  # cores used by the tracer during the load
    tracer_wakeups: Optional[int] = None  # its voluntary context switches then
    stderr: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def one_run(nginx: Nginx, variant: Variant, tool: Path, workdir: Path, seconds: int,
            round_no: int, position: int) -> RunResult:
    tracer = None
    if variant.tracer:
        tracer = TracerProcess(variant, tool, workdir, f"r{round_no}-{variant.name}")
    try:
        if tracer:
            tracer.start()
        before = nginx.accepts()  # accepted after the attach: traced
        meter = CpuMeter(nginx.pids, tracer.proc.pid if tracer else None)
        load = run_wrk(nginx.port, seconds)
        cpu = meter.stop()
        time.sleep(0.2)  # connections wrk left queued are accepted before the next one
        after = nginx.accepts()  # one accept queue: nginx takes this one after them
    finally:
        if tracer:
            tracer.stop()
    # after - before counts the load's connections plus the 'after' request itself.
    result = RunResult(round_no, position, variant.name, variant.tracer, variant.counted,
                       load.rate, load.requests, load.errors, after - before - 1, **cpu)
    if tracer is None:
        return result
    result.lost = tracer.lost()
    if variant.counted:
        ours, total, lost_on_stdout = count_events(variant, tracer.out_path, nginx.pids,
                                                   nginx.port)
        result.lost += lost_on_stdout
    result.ready_s = round(tracer.ready_s, 4) if tracer.ready_s is not None else None
    result.hwm_kb = tracer.hwm_kb
    result.returncode = tracer.returncode
    result.stderr = tracer.stderr_lines()[:5]
    if tracer.returncode not in (0, -signal.SIGINT):
        result.problems.append(f"exited with {tracer.returncode}")
    if result.lost:
        result.problems.append(f"lost {result.lost} events")
    if variant.counted:
        result.events = ours - 2  # both stub_status requests were traced too
        result.events_all = total
        if ours == 0:
            result.problems.append("no events printed")
        elif result.events != result.nginx_accepts:
            gap = result.nginx_accepts - result.events
            what = "missing" if gap > 0 else "extra"
            result.problems.append(f"{abs(gap)} events {what} vs nginx accepts")
        if result.problems:  # kept for a look: which events are missing
            kept = DEFAULT_JSON.parent / f"gap-{tracer.out_path.name}"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(tracer.out_path), kept)
            result.problems[-1] += f" (output kept in {kept.relative_to(REPO)})"
        else:
            tracer.out_path.unlink()  # up to a few tens of MB each
    return result


def cost_rounds(nginx: Nginx, variants: list[Variant], tool: Path, workdir: Path,
                rounds: int, seconds: int, rng: random.Random,
                quiet: QuietWait) -> list[RunResult]:
    results = []
    for r in range(1, rounds + 1):
        order = variants[:]
        rng.shuffle(order)
        log(f"round {r}/{rounds}: {', '.join(v.name for v in order)}")
        for position, variant in enumerate(order):
            quiet({os.getpid(), *nginx.pids})
            result = one_run(nginx, variant, tool, workdir, seconds, r, position)
            results.append(result)
            extra = f"; {'; '.join(result.problems)}" if result.problems else ""
            events = f", {result.events} events" if result.events is not None else ""
            tcpu = (f", tracer {result.tracer_cpu:.2f}" if result.tracer_cpu is not None
                    else "")
            log(f"  {variant.name:<11} {result.rate:>9.0f} req/s, "
                f"{result.nginx_accepts} accepts{events}; CPU: nginx {result.nginx_cpu:.2f}"
                f"{tcpu}, others {result.other_cpu:.2f}{extra}")
    return results


# --------------------------------------------------------------------------------- pipeline

def synthetic_records(n: int, seed: int = 5) -> list[bytes]:
    """Raw records as the kernel writes them, with a busy server's variety: mostly IPv4,
    some IPv6 and IPv4-mapped clients from a pool of a few thousand, a handful of
    processes and ports, ~21k accepts/s of timestamps, queue latency on most."""
    rng = random.Random(seed)
    af4, af6 = socket.AF_INET, socket.AF_INET6
    mapped = b"\0" * 10 + b"\xff\xff"
    v4 = [bytes([10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])
          for _ in range(2500)] + [bytes([127, 0, 0, 1])]
    v6 = [bytes([0xfd]) + rng.randbytes(15) for _ in range(400)]
    procs = [(rng.randrange(300, 400000), comm) for comm in
             ("nginx", "nginx", "nginx", "sshd", "python3", "postgres", "node", "java",
              "haproxy", "my \"odd\" name")]
    lports = [80, 443, 8080, 5432, 22]
    start_ns = 4_000_000_000_000
    records = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.7:
            family, raddr, laddr = af4, rng.choice(v4) + bytes(12), bytes([10, 0, 0, 1]) + bytes(12)
        elif kind < 0.85:
            family, raddr, laddr = af6, rng.choice(v6), bytes([0xfd]) + bytes(14) + b"\x01"
        else:
            family, raddr, laddr = af6, mapped + rng.choice(v4), mapped + bytes([10, 0, 0, 1])
        pid, comm = rng.choice(procs)
        records.append(encode({
            "ts_ns": start_ns + i * 47_000 + rng.randrange(1000),
            "cgroup_id": 4242 + pid % 7,
            "queue_latency_ns": 0 if rng.random() < 0.3 else rng.randrange(1000, 5_000_000),
            "pid": pid, "tid": pid + rng.randrange(4), "uid": 33 if comm == "nginx" else 0,
            "netns": 4026531840, "fd": rng.randrange(3, 4000), "listen_fd": 6,
            "backlog": rng.randrange(0, 16), "backlog_max": 4096, "family": family,
            "lport": rng.choice(lports), "rport": rng.randrange(32768, 61000), "probe": 1,
            "laddr": laddr, "raddr": raddr, "comm": comm,
        }))
    assert all(len(r) == RECORD.size for r in records[:10])
    return records


def pipeline_rate(records: list[bytes], make_line: Callable[[], Callable], batch: int,
                  repeats: int) -> float:
    """Events/s through Decoder -> formatter -> LineSink (written to /dev/null)."""
    batches = [records[i:i + batch] for i in range(0, len(records), batch)]
    rates = []
    with open(os.devnull, "w") as devnull:
        for _ in range(repeats):
            sink = LineSink(Decoder(boot_to_wall_ns=1_700_000_000_000_000_000), make_line(),
                            devnull)
            handle = sink.handle
            t0 = time.perf_counter()
            for chunk in batches:
                handle(chunk)
            rates.append(len(records) / (time.perf_counter() - t0))
    return statistics.median(rates)


def decode_rate(records: list[bytes], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        decode = Decoder(boot_to_wall_ns=1_700_000_000_000_000_000).decode
        t0 = time.perf_counter()
        for r in records:
            decode(r)
        rates.append(len(records) / (time.perf_counter() - t0))
    return statistics.median(rates)


def pipeline(n: int, repeats: int) -> dict:
    log(f"pipeline: {n} synthetic records")
    records = synthetic_records(n)
    small = records[: max(1, n // 5)]
    return {
        "records": n,
        "text_eps": pipeline_rate(records, lambda: TextFormatter().line, 100, repeats),
        "json_eps": pipeline_rate(records, lambda: JsonFormatter().line, 100, repeats),
        "text_eps_batch1": pipeline_rate(small, lambda: TextFormatter().line, 1, repeats),
        "decode_eps": decode_rate(records, repeats),
    }


# ------------------------------------------------------------------------ start and memory

@dataclass
class StartSample:
    tracer: str
    banner_s: float
    first_event_s: float
    hwm_kb: Optional[int]
    maxrss_kb: Optional[int]


def start_sample(variant: Variant, tool: Path) -> StartSample:
    """exec -> banner line on stdout -> connect once -> that accept's line; peak RSS."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    me = str(os.getpid())
    t0 = time.monotonic()
    proc = subprocess.Popen(variant.command(tool), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    hwm = maxrss = None
    try:
        banner_s = _read_until(proc, lambda line: line.strip() == BANNER, t0)
        conn = socket.create_connection(("127.0.0.1", port))
        peer, _ = listener.accept()

        def is_ours(line: str) -> bool:
            fields = line.split()
            if variant.tracer == "peer":
                return len(fields) >= 4 and fields[1] == me
            return len(fields) >= 8 and fields[1] == me and fields[-2] == str(port)

        first_s = _read_until(proc, is_ours, t0)
        conn.close()
        peer.close()
        hwm = vm_hwm_kb(proc.pid)
    finally:
        listener.close()
        maxrss = _stop_and_reap(proc, resend=variant.tracer == "peer")
    return StartSample(variant.tracer, banner_s, first_s, hwm, maxrss)


def _read_until(proc: subprocess.Popen, wanted: Callable[[str], bool], t0: float) -> float:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = t0 + 20
    buffered = getattr(proc, "_bench_buf", b"")
    try:
        while True:
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                if wanted(line.decode(errors="replace")):
                    proc._bench_buf = buffered
                    return time.monotonic() - t0
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TracerFailed(f"{variant_name(proc)}: expected line not seen in 20 s")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                err = proc.stderr.read().decode(errors="replace") if proc.poll() else ""
                raise TracerFailed(f"{variant_name(proc)} exited: {err.strip()[-400:]}")
            buffered += chunk
    finally:
        sel.close()


def variant_name(proc: subprocess.Popen) -> str:
    return Path(str(proc.args[0])).name


def _stop_and_reap(proc: subprocess.Popen, resend: bool) -> Optional[int]:
    """SIGINT until exit (draining its pipes); the child's ru_maxrss in kB from wait4."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        resend_at = time.monotonic() + (0.5 if resend else 10)
        while time.monotonic() < resend_at:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return usage.ru_maxrss
            for stream in (proc.stdout, proc.stderr):  # never let a full pipe block it
                with contextlib.suppress(OSError, ValueError):
                    os.set_blocking(stream.fileno(), False)
                    stream.read()
            time.sleep(0.02)
    proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss


# ---------------------------------------------------------------------------------- report

@dataclass
class Row:
    figure: str
    value: str
    target: str = ""
    verdict: str = "info"  # PASS, FAIL, MISS (performance target missed), info


def median_or_none(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(results: list[RunResult], starts: list[StartSample], pipe: dict,
              variants: list[Variant]) -> tuple[list[Row], dict, list[str]]:
    rows: list[Row] = []
    broken: list[str] = []
    figures: dict = {}
    by_round: dict[int, dict[str, RunResult]] = {}
    for r in results:
        by_round.setdefault(r.round, {})[r.variant] = r

    # 1. cost: request-rate medians, ratio to the same round's untraced run.
    untraced = median_or_none([r.rate for r in results if r.variant == "untraced"])
    rows.append(Row("nginx req/s, untraced (median)", f"{untraced:,.0f}", "~21k by hand"))
    figures["untraced_rps"] = untraced
    # The cost figure comes from the /dev/null runs; --quick has only counted ones.
    cost_variant = {}
    for v in variants:
        if v.tracer and (not v.counted or v.tracer not in cost_variant):
            cost_variant[v.tracer] = v.name
    ratios = {}
    for tracer, name in cost_variant.items():
        per_round = [rs[name].rate / rs["untraced"].rate for rs in by_round.values()
                     if name in rs and "untraced" in rs and rs["untraced"].rate]
        ratios[tracer] = statistics.median(per_round)
        figures[f"{name}_rps"] = median_or_none([r.rate for r in results if r.variant == name])
        figures[f"{name}_ratio"] = ratios[tracer]
        figures[f"{name}_ratios"] = [round(x, 4) for x in per_round]
    for name in [v.name for v in variants if v.tracer]:
        rate = median_or_none([r.rate for r in results if r.variant == name])
        per_round = [rs[name].rate / rs["untraced"].rate for rs in by_round.values()
                     if name in rs and "untraced" in rs]
        ratio = statistics.median(per_round)
        label = LABELS[name.split("+")[0]] + (" -> counted file" if "+" in name else
                                              " > /dev/null")
        target, verdict = "", "info"
        tracer = name.split("+")[0]
        if tracer != "peer" and cost_variant.get(tracer) == name and "peer" in ratios:
            floor = max(TARGET_RATIO[tracer], ratios["peer"])
            target = f">= {TARGET_RATIO[tracer]}, >= peer {ratios['peer']:.3f}"
            verdict = "PASS" if ratio >= floor else "MISS"
        spread = f" [{min(per_round):.3f}..{max(per_round):.3f}]" if len(per_round) > 1 else ""
        rows.append(Row(f"{label}: req/s, ratio to untraced",
                        f"{rate:,.0f}, {ratio:.3f}{spread}", target, verdict))

    # CPU decomposition: where the cost goes (per accepted connection).
    for name in [v.name for v in variants]:
        runs = [r for r in results if r.variant == name]
        per_req = statistics.median(r.nginx_cpu / r.rate * 1e6 for r in runs if r.rate)
        value = f"nginx {per_req:.1f} us/req"
        if runs[0].tracer:
            cores = statistics.median(r.tracer_cpu for r in runs)
            per_event = statistics.median(r.tracer_cpu / r.rate * 1e6 for r in runs if r.rate)
            wakeups = statistics.median(r.tracer_wakeups / max(r.nginx_accepts, 1)
                                        for r in runs)
            value += (f"; tracer {cores:.2f} cores = {per_event:.1f} us/event, "
                      f"{wakeups:.2f} wakeups/event")
        label = (LABELS[name.split("+")[0]] + (" -> file" if "+" in name else "")
                 if runs[0].tracer else "untraced")
        rows.append(Row(f"CPU: {label} (medians)", value))

    # 2. completeness: every traced run, one row per variant; failing rounds named.
    for name in [v.name for v in variants if v.tracer]:
        runs = [r for r in results if r.variant == name]
        tool = not name.startswith("peer")
        lost = sum(r.lost or 0 for r in runs)
        ok = [r for r in runs if not r.problems]
        if runs[0].counted:
            events = sum(r.events for r in runs)
            accepts = sum(r.nginx_accepts for r in runs)
            other = sum(r.events_all - r.events - 2 for r in runs)
            value = (f"{len(ok)}/{len(runs)} rounds exact: {events:,}/{accepts:,} "
                     f"printed/accepted, lost {lost} ({other} other lines)")
        else:
            value = f"{len(ok)}/{len(runs)} rounds ok: lost {lost} (not counted)"
        failing = [f"r{r.round}: {'; '.join(r.problems)}" for r in runs if r.problems]
        if failing:
            value += " — " + ", ".join(failing)
            if tool:
                broken += [f"{name} round {f}" for f in failing]
        label = LABELS[name.split("+")[0]] + (" -> counted file" if "+" in name else
                                              " > /dev/null")
        rows.append(Row(f"complete: {label}", value, "exact, 0 lost",
                        "FAIL" if failing else "PASS"))
    other = [r.other_cpu for r in results]
    figures["other_cpu_cores"] = {"median": statistics.median(other), "max": max(other)}
    rows.insert(1, Row("other processes' CPU during loads (median, max)",
                    f"{statistics.median(other):.2f}, {max(other):.2f} cores", "~0",
                    "NOISY" if max(other) > 0.1 else "info"))

    # 3. pipeline.
    for key, label, target in (("text_eps", "pipeline text events/s (batch 100)",
                                TARGET_TEXT_EPS),
                               ("json_eps", "pipeline JSON events/s (batch 100)",
                                TARGET_JSON_EPS)):
        value = pipe[key]
        rows.append(Row(label, f"{value:,.0f}", f">= {target:,}",
                        "PASS" if value >= target else "MISS"))
    rows.append(Row("pipeline text events/s (batch 1: flush per event)",
                    f"{pipe['text_eps_batch1']:,.0f}"))
    rows.append(Row("decode only events/s", f"{pipe['decode_eps']:,.0f}"))
    figures["pipeline"] = pipe

    # 4. start and memory.
    for tracer in ("text", "peer"):
        samples = [s for s in starts if s.tracer == tracer]
        if not samples:
            continue
        banner = statistics.median(s.banner_s for s in samples)
        first = statistics.median(s.first_event_s for s in samples)
        rss = max(max(s.hwm_kb or 0, s.maxrss_kb or 0) for s in samples) / 1024
        is_tool = tracer == "text"
        under_load = [r.hwm_kb for r in results if r.tracer == tracer and r.hwm_kb]
        if tracer == "text":  # tcpaccept's figure covers text and JSON runs
            under_load += [r.hwm_kb for r in results if r.tracer == "json" and r.hwm_kb]
        load_rss = max(under_load) / 1024 if under_load else 0.0
        name = LABELS[tracer]
        rows.append(Row(f"{name}: exec -> banner (median)", f"{banner:.3f} s",
                        f"<= {TARGET_START_S} s" if is_tool else "",
                        ("PASS" if banner <= TARGET_START_S else "MISS") if is_tool else "info"))
        rows.append(Row(f"{name}: exec -> first event (median)", f"{first:.3f} s"))
        peak = max(rss, load_rss)
        rows.append(Row(f"{name}: peak RSS (idle {rss:.1f} MB, under load {load_rss:.1f} MB)",
                        f"{peak:.1f} MB", f"<= {TARGET_RSS_MB:.0f} MB" if is_tool else "",
                        ("PASS" if peak <= TARGET_RSS_MB else "MISS") if is_tool else "info"))
        figures[f"{tracer}_start"] = {"banner_s": banner, "first_event_s": first,
                                      "rss_idle_mb": rss, "rss_load_mb": load_rss}
    return rows, figures, broken


def print_table(rows: list[Row]) -> None:
    w1 = max(len(r.figure) for r in rows)
    w2 = max(len(r.value) for r in rows)
    w3 = max(len(r.target) for r in rows)
    print(f"{'figure':<{w1}}  {'value':<{w2}}  {'target':<{w3}}  result")
    print(f"{'-' * w1}  {'-' * w2}  {'-' * w3}  ------")
    for r in rows:
        print(f"{r.figure:<{w1}}  {r.value:<{w2}}  {r.target:<{w3}}  {r.verdict}")


# ------------------------------------------------------------------------------------ main

def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="rounds of all variants (default 5)")
    p.add_argument("--seconds", type=int, default=10, help="wrk duration per run (default 10)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="PATH",
                   help=f"results file (default {DEFAULT_JSON.relative_to(REPO)})")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke test: 1 round of 2 s loads, counted runs only, 20k records")
    p.add_argument("--records", type=int, default=500_000, help="pipeline records")
    p.add_argument("--seed", type=int, default=None, help="order shuffle seed (default: random)")
    p.add_argument("--tool", type=Path, default=DEFAULT_TOOL, help="tcpaccept executable")
    p.add_argument("--quiet-wait", type=float, default=None, metavar="SECONDS",
                   help="at most this long in all, wait before runs for other processes to "
                        "use < 0.1 CPU (default 600; 0 with --quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.records = 1, 2, 20_000
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 600.0
    if args.rounds < 1 or args.seconds < 1 or args.records < 100:
        p.error("--rounds, --seconds must be >= 1 and --records >= 100")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    variants = VARIANTS_QUICK if args.quick else VARIANTS_FULL
    started = time.time()
    try:
        ensure_tools(args.tool)
    except (BenchError, subprocess.CalledProcessError) as exc:
        log(f"cannot run: {exc}")
        return 2
    rng = random.Random(args.seed)
    results: list[RunResult] = []
    starts: list[StartSample] = []
    broken: list[str] = []
    quiet = QuietWait(args.quiet_wait)
    with tempfile.TemporaryDirectory(prefix="tcpaccept-bench-") as tmp:
        workdir = Path(tmp)
        nginx = Nginx(workdir)
        try:
            nginx.start()
            log(f"nginx on 127.0.0.1:{nginx.port} (pids {sorted(nginx.pids)}), "
                f"{args.rounds} round(s) x {len(variants)} runs x {args.seconds} s, "
                f"seed {args.seed}")
            if not args.quick:
                run_wrk(nginx.port, 2)  # warm-up, not reported
            results = cost_rounds(nginx, variants, args.tool, workdir, args.rounds,
                                  args.seconds, rng, quiet)
        except TracerFailed as exc:
            broken.append(str(exc))
        except BenchError as exc:
            log(f"cannot run: {exc}")
            return 2
        finally:
            nginx.stop()
        if not broken:
            try:
                for i in range(args.rounds):
                    order = [Variant("text", "text", False), Variant("peer", "peer", False)]
                    for variant in order if i % 2 == 0 else order[::-1]:
                        quiet({os.getpid()})
                        starts.append(start_sample(variant, args.tool))
            except TracerFailed as exc:
                broken.append(str(exc))
    if broken and not results:
        for problem in broken:
            log(f"BROKEN: {problem}")
        _write_json(args, {"broken": broken}, [], results, starts, None, started)
        return 1
    pipe = pipeline(args.records, 1 if args.quick else 3)
    rows, figures, problems = summarize(results, starts, pipe, variants)
    broken += problems
    print_table(rows)
    _write_json(args, figures, rows, results, starts, pipe, started, broken)
    if any(r.wrk_errors for r in results):
        log("note: wrk reported socket errors or non-2xx replies (see the JSON)")
    for problem in broken:
        log(f"BROKEN: {problem}")
    log(f"wrote {args.json}")
    return 1 if broken else 0


def _write_json(args, figures, rows, results, starts, pipe, started, broken=()) -> None:
    doc = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds_total": round(time.time() - started, 1),
            "kernel": platform.release(), "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "quick": args.quick, "rounds": args.rounds,
            "seconds": args.seconds, "records": args.records, "seed": args.seed,
            "tool": str(args.tool),
            "wrk": "wrk -t2 -c50 -d{seconds}s -H 'Connection: close'",
        },
        "ok": not broken,
        "broken": list(broken),
        "figures": figures,
        "table": [asdict(r) for r in rows],
        "runs": [asdict(r) for r in results],
        "start_samples": [asdict(s) for s in starts],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
