"""Issue 23: arm64 nodes, proven in arm64 guests (Debian's arm64 6.1 and 6.12 kernels under
qemu-system-aarch64, every instruction emulated).

Two kinds of run, each guest single-threaded on one host core, two at a time:
- the aarch64 wheel, built here from this checkout, installed into a fresh venv in the guest
  (no compiler, no network) and run with each attach method the kernel offers, while a
  server accepts known connections on IPv4, IPv6 and dual-stack listeners plus a listener
  the port filter must hide: every JSON record must equal what the server saw;
- the kernel suite's tests that go through the arm64-specific code (arch.bpf.h: kprobe
  arguments, the saved user registers of the tracepoint programs and of sys_exit, syscall
  numbers) with each method forced, against the checkout's aarch64 object.
What is left to the x86_64 matrix: 5.10, the method-agnostic modules (sock_diag drops,
session, cgroups, output), MPTCP, PID namespaces, the summary/metrics modes, big hosts,
most filters and io_uring modes, signals, the seed layout.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from guest import ARM64_KERNELS, GuestError, GuestResult, run_in_guest, run_script
from guest_suites import PARALLEL_GUESTS, Outcome, assert_suite_passed, run_cells, table

# What each arm64 kernel offers: fexit needs ftrace direct calls, on arm64 since 6.4.
USABLE_METHODS = {"6.1": ("kprobe", "tracepoint"), "6.12": ("fexit", "kprobe", "tracepoint")}
OBJECT = "src/tcpaccept/bpf/aarch64/tcpaccept.bpf.o"

# The kernel suite's tests that go through arm64 code (kprobe arguments, the saved user
# registers, syscall numbers), chosen for emulation's price (about 5 s a test, twice that on
# a busy host): exact accepts on IPv4 and IPv6 and dual-stack listeners, BL, an accept that
# blocked before tracing (its fds from the saved registers); io_uring (the tracepoint method
# sees it from 6.2 through tp_btf); both tracepoint programs (BTF walk, probe reads) and
# three filters with the tracepoint method. The aarch64 wheel test below covers queue
# latency and the port filter with every method.
EVENTS = "tests/kernel/test_accept_events.py"
URING = "tests/kernel/test_io_uring.py::test_io_uring_accepts_are_reported_exactly"
FILTERS = "tests/kernel/test_filters.py"
CORE = [f"{EVENTS}::test_each_accept_reports_server_and_client_exactly",
        f"{EVENTS}::test_dual_stack_listener_reports_ipv4_client_as_ipv4",
        f"{EVENTS}::test_backlog_is_the_listeners_queue_after_the_accept",
        f"{EVENTS}::test_accept_blocked_before_tracing_started_matches_the_method"]
TRACEPOINT = ["tests/kernel/test_accept_program.py::test_both_accept_programs_report_every_field"]
SUITES = {
    ("6.12", "fexit"): [*CORE, f"{URING}[single-ipv4]"],
    ("6.12", "kprobe"): [*CORE, f"{URING}[single-ipv4]"],
    ("6.12", "tracepoint"): [*CORE, *TRACEPOINT, f"{URING}[single-ipv4]",
                             f"{URING}[multishot-ipv6]", f"{FILTERS}::test_pid_two_pids",
                             f"{FILTERS}::test_port_two_ports",
                             f"{FILTERS}::test_remote_ipv4_and_ipv6_ranges"],
    # 6.1: the tracepoint programs' older paths (probe reads, no bpf_rdonly_cast).
    ("6.1", "tracepoint"): [*CORE, *TRACEPOINT],
}
RESULTS: dict[tuple[str, str], Outcome] = {}


def _suite(kernel: str, method: str, repo: Path, cache: Path) -> GuestResult:
    tests = SUITES[(kernel, method)]
    marks = "not host_only" if method == "tracepoint" else "not host_only and not method_agnostic"
    return run_in_guest(
        kernel, [".venv/bin/python", "-m", "pytest", "-q", "-rfEs", "-m", marks, *tests], repo,
        timeout=900, cache=cache, arch="arm64",
        env={"TCPACCEPT_TEST_PROBE": method, "TCPACCEPT_BPF_OBJECT": str(repo / OBJECT)},
    )


@pytest.fixture(scope="module")
def suites(arm64_cache: Path, repo_root: Path) -> dict:
    return run_cells(SUITES, lambda k, m: _suite(k, m, repo_root, arm64_cache), RESULTS)


def arm64_table() -> str:
    return table(SUITES, RESULTS)


@pytest.mark.parametrize("kernel,method", list(SUITES), ids=[f"{k}-{m}" for k, m in SUITES])
def test_arm64_kernel_suite_passes(suites: dict, kernel: str, method: str) -> None:
    assert_suite_passed(suites[(kernel, method)], f"arm64 guest {kernel} {method}")


# ---- the aarch64 wheel in the guest ----

@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    """The aarch64 wheel of this checkout and its dependency's wheel (pure Python): what
    the guest installs from, offline."""
    out = tmp_path_factory.mktemp("arm64-wheels")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(out), str(repo_root)],
        env=dict(os.environ, TCPACCEPT_TARGET_MACHINE="aarch64",
                 PIP_DISABLE_PIP_VERSION_CHECK="1"),
        capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    assert len(list(out.glob("tcpaccept-*-py3-none-linux_aarch64.whl"))) == 1, \
        list(out.iterdir())
    return out


# Listeners on fixed ports; the tracer shows only the first three (-P), so the fourth's
# accepts prove the filter. Each server lets its clients wait QUEUE_WAIT_S in the accept
# queue, then accepts them in order, noting what each accept returned.
TRAFFIC = r"""
import json, os, socket, sys, time
QUEUE_WAIT_S = 0.3
comm = open("/proc/self/comm").read().strip()
seen = []

def unmapped(address):
    return address.removeprefix("::ffff:") if "." in address else address

def serve(family, host, port, clients, v6only=True, backlog=8):
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    server.bind((host, port))
    server.listen(backlog)
    conns = [socket.create_connection((c, port)) for c in clients]
    time.sleep(QUEUE_WAIT_S)
    for queued_after in range(len(conns) - 1, -1, -1):
        child, peer = server.accept()
        raddr = unmapped(peer[0])
        seen.append({"pid": os.getpid(), "comm": comm, "family": 4 if "." in raddr else 6,
                     "raddr": raddr, "rport": peer[1],
                     "laddr": unmapped(child.getsockname()[0]), "lport": port,
                     "backlog": queued_after, "backlog_max": backlog,
                     "fd": child.fileno(), "listen_fd": server.fileno()})
        conns.append(child)  # kept open: fds stay distinct

serve(socket.AF_INET, "127.0.0.1", 47001, ["127.0.0.1"] * 3)
serve(socket.AF_INET6, "::1", 47002, ["::1"] * 2)
serve(socket.AF_INET6, "::", 47003, ["127.0.0.1", "::1"], v6only=False)
serve(socket.AF_INET, "127.0.0.1", 47004, ["127.0.0.1"] * 2)
with open(sys.argv[1], "w") as out:
    json.dump([s for s in seen if s["lport"] != 47004], out)
"""

WHEEL_SCRIPT = r"""
set -u
echo "machine $(uname -m)"
start=$SECONDS
# No ensurepip (a minute emulated): the checkout venv's pip (pure Python) installs into
# the fresh venv it is run by.
python3 -m venv --without-pip /tmp/venv || exit 10
PYTHONPATH=$(echo "$PWD"/.venv/lib/python3*/site-packages) /tmp/venv/bin/python -m pip \
  install -q --ignore-installed --no-index --disable-pip-version-check \
  --find-links /vmio/wheels tcpaccept || exit 11
echo "installed in $((SECONDS - start)) s"
/tmp/venv/bin/tcpaccept --check >/vmio/check.txt 2>&1 || {{ cat /vmio/check.txt; exit 12; }}
for method in {methods}; do
  /tmp/venv/bin/tcpaccept --probe "$method" --json -P 47001,47002,47003 \
    >"/vmio/$method.json" 2>"/vmio/$method.err" &
  tracer=$!
  wait_for_line "/vmio/$method.err" '^Tracing' 180 || {{ cat "/vmio/$method.err"; exit 13; }}
  python3 /vmio/traffic.py "/vmio/$method.expected" || exit 14
  sleep 1
  kill -TERM "$tracer"
  wait "$tracer"
  echo "$method rc=$? after $((SECONDS - start)) s"
done
"""


def _run_wheel(kernel: str, repo: Path, cache: Path, wheels: Path, share: Path) -> GuestResult:
    share.mkdir(parents=True)
    (share / "wheels").mkdir()
    for wheel in wheels.iterdir():
        (share / "wheels" / wheel.name).write_bytes(wheel.read_bytes())
    (share / "traffic.py").write_text(TRAFFIC)
    script = WHEEL_SCRIPT.format(methods=" ".join(USABLE_METHODS[kernel]))
    return run_script(kernel, script, repo, timeout=600, cache=cache, share_dir=share,
                      arch="arm64")


@pytest.fixture(scope="module")
def wheel_runs(arm64_cache: Path, repo_root: Path, wheelhouse: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("arm64-wheel-runs")
    runs: dict = {}
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_GUESTS) as pool:
        futures = {pool.submit(_run_wheel, k, repo_root, arm64_cache, wheelhouse, base / k): k
                   for k in ARM64_KERNELS}
        for future in concurrent.futures.as_completed(futures):
            kernel = futures[future]
            try:
                runs[kernel] = (future.result(), base / kernel)
            except GuestError as exc:
                runs[kernel] = (exc, base / kernel)
    return runs


def accept_records(text: str) -> list[dict]:
    return [record for record in map(json.loads, text.splitlines())
            if record.get("event") == "accept"]


@pytest.mark.parametrize("kernel", sorted(ARM64_KERNELS))
def test_arm64_wheel_reports_exact_accepts_with_each_method(wheel_runs: dict,
                                                            kernel: str) -> None:
    result, share = wheel_runs[kernel]
    if isinstance(result, GuestError):
        pytest.fail(f"arm64 guest {kernel} failed: {result}", pytrace=False)
    assert result.returncode == 0, result.output[-4000:]
    assert "machine aarch64" in result.output
    print(result.output)
    check = (share / "check.txt").read_text()
    print(f"--- {kernel}: tcpaccept --check\n{check}")
    usable = tuple(m for m in ("fexit", "kprobe", "tracepoint") if f"{m}: usable" in check)
    assert usable == USABLE_METHODS[kernel], check
    for method in USABLE_METHODS[kernel]:
        assert f"{method} rc=0 " in result.output, (share / f"{method}.err").read_text()
        expected = json.loads((share / f"{method}.expected").read_text())
        records = accept_records((share / f"{method}.json").read_text())
        assert len(expected) == 7
        # Queue latency: each connection waited at least the server's sleep (0.3 s).
        for record in records:
            assert 250_000 <= record["queue_latency_us"] < 60_000_000, record
        knows_fds = method == "tracepoint"
        keys = ("pid", "comm", "family", "raddr", "rport", "laddr", "lport", "backlog",
                "backlog_max", "fd", "listen_fd")
        ours = sorted(tuple(r[k] for k in keys) for r in records)
        wanted = sorted(tuple(e[k] if knows_fds or k not in ("fd", "listen_fd") else None
                              for k in keys) for e in expected)
        print(f"--- {kernel} {method}: {len(records)} rows")
        assert ours == wanted, f"{method}: {ours} != {wanted}"


# ---- the arm64 image in the guest ----

@pytest.fixture(scope="module")
def arm64_image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The linux/arm64 image of this checkout (tests/fleet/images.py; podman's layer cache
    makes this quick after tests/fleet/test_image.py), unpacked as a runtime would."""
    from tests.fleet import images

    image = images.build_arm64()
    return images.export_rootfs(image, tmp_path_factory.mktemp("arm64-image") / "root")


# The image's own userland (its python3, libbpf1, wheel) on the guest's kernel: a chroot
# with the kernel's /sys and /proc, as the DaemonSet's container sees them.
IMAGE_CHECK = r"""
root=/vmio/root
mount --rbind /sys "$root/sys" && mount -t proc proc "$root/proc" || exit 20
chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin tcpaccept --check
"""


def test_arm64_image_runs_check_in_an_arm64_guest(arm64_cache: Path, repo_root: Path,
                                                  arm64_image_root: Path) -> None:
    result = run_script("6.12", IMAGE_CHECK, repo_root, timeout=300, cache=arm64_cache,
                        share_dir=arm64_image_root.parent, arch="arm64")
    print(result.output)
    assert result.returncode == 0, result.output
    for method in USABLE_METHODS["6.12"]:
        assert f"{method}: usable" in result.output
    assert "auto would pick: fexit" in result.output
