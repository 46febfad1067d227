"""Boot a stock Debian kernel under qemu and run one command inside it, as root.

Why: this host's kernel cannot attach kprobes or fentry programs, so the attach methods
are proven inside Debian's own 5.10 (bullseye), 6.1 (bookworm) and 6.12 (trixie)
kernels. tests/vm/build_guest.sh builds the images once into a cache directory.
The arm64 build (arch="arm64") boots Debian's arm64 6.1 and 6.12 kernels under
qemu-system-aarch64, emulated instruction by instruction, from its own cache subdirectory
(ARM64_CACHE).

What the guest sees:
- a Debian bookworm root (python3, bpftool, bpftrace, nginx-light, iproute2, ...) with a
  tmpfs-backed overlay on top: the whole tree is writable, nothing reaches the host;
- the project at the same absolute path as on the host, likewise overlaid, so the
  project's .venv (made with Debian's /usr/bin/python3) works unchanged;
- the kernel package's modules at /lib/modules (modprobe works);
- proc, sysfs, devtmpfs, devpts, /dev/shm, tracefs, debugfs, bpffs, cgroup2, and lo up;
- /vmio: a writable directory shared with the host (see `share_dir`).

The command runs under bash with cwd = the project, stdin from /dev/null, and stdout and
stderr together into /vmio/output; its exit status lands in /vmio/rc, after which init
powers the guest off. No rc file means the guest crashed or hung, and that raises
GuestError: a run never passes by accident.

Caveat for scripts: bash starts background jobs with SIGINT ignored, and Python keeps it
ignored, so stop a background python3 with SIGTERM. Programs that install their own
SIGINT handler (bpftrace) are unaffected; see `stop_with_sigint` in GUEST_SHELL_LIB.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

# Kernel short name -> the Debian release whose stock kernel it is.
KERNELS: dict[str, str] = {"5.10": "bullseye", "6.1": "bookworm", "6.12": "trixie"}
# The arm64 guests, every instruction emulated (build_guest.sh's arm64 list).
ARM64_KERNELS: dict[str, str] = {"6.1": "bookworm", "6.12": "trixie"}

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_guest.sh"
DEFAULT_CACHE = Path(os.environ.get("TCPACCEPT_VM_CACHE", "/var/cache/tcpaccept-vm"))
# Its own subdirectory: an arm64 build never touches the x86_64 images.
ARM64_CACHE = DEFAULT_CACHE / "arm64"

# Multi-threaded TCG crashed 6.12 ("Oops: int3") and hung 6.1 while probes were attached
# and detached; /dev/kvm here is nested and cannot run a stock kernel.
QEMU_ACCEL = "tcg,thread=single"
GUEST_MEMORY_MB = 2048
# Per guest architecture: qemu and its machine, and the kernel's serial console.
QEMU_MACHINE: dict[str, list[str]] = {
    "amd64": ["qemu-system-x86_64", "-accel", QEMU_ACCEL, "-cpu", "max"],
    # virt: PCI (virtio-9p-pci) and a PL011 serial port (ttyAMA0). cortex-a72 rather than
    # max: no pointer authentication, whose emulated QARMA hashing slows every call.
    "arm64": ["qemu-system-aarch64", "-machine", "virt", "-accel", QEMU_ACCEL,
              "-cpu", "cortex-a72"],
}
CONSOLE = {"amd64": "ttyS0", "arm64": "ttyAMA0"}

# Exported in the guest before the caller's env: no bytecode or pytest cache written into
# the (overlaid) project, and a way for tests to tell where they run.
BASE_ENV: dict[str, str] = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTEST_ADDOPTS": "-p no:cacheprovider",
    "TCPACCEPT_IN_VM": "1",
}

# Bash functions prepended to every script that run_script() runs in the guest.
GUEST_SHELL_LIB = r"""
# wait_for_line FILE REGEX [SECONDS]: wait until FILE has a line matching REGEX.
wait_for_line() {
  local file=$1 regex=$2 limit=${3:-60} i
  for ((i = 0; i < limit * 10; i++)); do
    grep -Eq -- "$regex" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "wait_for_line: no '$regex' in $file after ${limit}s" >&2
  return 1
}
# wait_for_path PATH [SECONDS]: wait until PATH exists.
wait_for_path() {
  local path=$1 limit=${2:-60} i
  for ((i = 0; i < limit * 10; i++)); do
    [ -e "$path" ] && return 0
    sleep 0.1
  done
  echo "wait_for_path: no $path after ${limit}s" >&2
  return 1
}
# stop_with_sigint PID [SECONDS]: SIGINT until PID exits (bpftrace 0.17 under TCG can
# miss a single one), then return its exit status; PID must be a child of this shell.
stop_with_sigint() {
  local pid=$1 limit=${2:-60} i
  for ((i = 0; i < limit; i++)); do
    kill -INT "$pid" 2>/dev/null || break
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$pid" 2>/dev/null || break 2
      sleep 0.1
    done
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "stop_with_sigint: $pid still running after ${limit}s, killing it" >&2
    kill -KILL "$pid"
  fi
  wait "$pid"
}
"""


class GuestError(RuntimeError):
    """The guest could not be built, did not boot, crashed or timed out."""


@dataclass(frozen=True)
class GuestResult:
    returncode: int
    output: str  # the command's stdout and stderr, interleaved
    seconds: float  # wall time from starting qemu to its exit
    console: str  # the serial console: kernel messages, init's notes


@dataclass(frozen=True)
class GuestImage:
    kernel: str
    release: str  # `uname -r` inside the guest
    vmlinux: Path
    initramfs: Path
    modules: Path  # the directory shared as /lib/modules
    rootfs: Path

    arch: str = "amd64"  # the guest's Debian architecture

    @classmethod
    def locate(cls, kernel: str, cache: Path = DEFAULT_CACHE, arch: str = "amd64") -> GuestImage:
        known = ARM64_KERNELS if arch == "arm64" else KERNELS
        if kernel not in known:
            raise ValueError(f"unknown {arch} kernel {kernel!r}, expected one of {sorted(known)}")
        kdir = cache / "kernels" / kernel
        image = cls(
            arch=arch,
            kernel=kernel,
            release=_read_text(kdir / "release").strip(),
            vmlinux=kdir / "vmlinux",
            initramfs=kdir / "initramfs.img",
            modules=(kdir / "pkg" / "lib" / "modules").resolve(),
            rootfs=cache / "rootfs",
        )
        for path in (image.vmlinux, image.initramfs, image.modules, image.rootfs):
            if not path.exists():
                raise GuestError(f"{path} missing: run {BUILD_SCRIPT} {cache} {arch}")
        return image


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError as exc:
        raise GuestError(f"{path} missing: run {BUILD_SCRIPT}") from exc


def build_images(cache: Path = DEFAULT_CACHE, timeout: float = 1800, arch: str = "amd64") -> None:
    """Build or refresh the guest images (quick when the cache is complete)."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), str(cache), arch],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise GuestError(
            f"{BUILD_SCRIPT} failed with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )


def _virtfs(tag: str, path: Path, readonly: bool) -> list[str]:
    # security_model=none: qemu runs as root and the guest sees the host's owners and
    # modes as they are. multidevs=remap keeps inode numbers unique if a share spans
    # several host filesystems. A comma inside an option value is written twice.
    escaped = str(path).replace(",", ",,")
    spec = f"local,path={escaped},mount_tag={tag},security_model=none,multidevs=remap"
    if readonly:
        spec += ",readonly=on"
    return ["-virtfs", spec]


def qemu_command(image: GuestImage, repo: Path, vmio: Path, smp: int = 1) -> list[str]:
    return [
        *QEMU_MACHINE[image.arch],
        "-m", str(GUEST_MEMORY_MB),
        "-smp", str(smp),
        "-nodefaults",
        "-nographic",
        "-serial", "stdio",
        "-nic", "none",
        "-no-reboot",
        # x86_64: the uncompressed ELF boots through its PVH note, skipping the
        # decompressor. arm64: the kernel's Image, which qemu unpacks if gzipped.
        "-kernel", str(image.vmlinux),
        "-initrd", str(image.initramfs),
        "-append", f"console={CONSOLE[image.arch]} panic=-1 quiet",
        *_virtfs("rootfs", image.rootfs, readonly=True),
        *_virtfs("repo", repo, readonly=True),
        *_virtfs("modules", image.modules, readonly=True),
        *_virtfs("vmio", vmio, readonly=False),
    ]  # fmt: skip


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _env_file(env: Mapping[str, str]) -> str:
    lines = []
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"not a shell variable name: {name!r}")
        lines.append(f"export {name}={shlex.quote(value)}\n")
    return "".join(lines)


def _write_inputs(
    vmio: Path, script: str, repo: Path, kernel: str, env: Optional[Mapping[str, str]]
) -> None:
    for stale in ("rc", "output"):
        (vmio / stale).unlink(missing_ok=True)
    (vmio / "config").write_text(f"REPO={shlex.quote(str(repo))}\n")
    full_env = {**BASE_ENV, "TCPACCEPT_VM_KERNEL": kernel, **(env or {})}
    (vmio / "env").write_text(_env_file(full_env))
    (vmio / "cmd").write_text(GUEST_SHELL_LIB + "\n" + script + "\n")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _boot(image: GuestImage, repo: Path, vmio: Path, timeout: float, smp: int) -> GuestResult:
    console_path = vmio / "console.log"
    started = time.monotonic()
    with console_path.open("wb") as console:
        proc = subprocess.Popen(
            qemu_command(image, repo, vmio, smp),
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
        )
        try:
            qemu_rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            qemu_rc = None
    seconds = time.monotonic() - started
    console_text = console_path.read_text(errors="replace")
    rc_path = vmio / "rc"
    where = f"{image.arch} kernel {image.kernel} ({image.release})"
    if qemu_rc is None:
        raise GuestError(f"{where}: timed out after {timeout:.0f}s\n{_tail(console_text)}")
    if not rc_path.exists():
        raise GuestError(
            f"{where}: guest stopped (qemu exit {qemu_rc}) before the command finished\n"
            f"{_tail(console_text)}"
        )
    output_path = vmio / "output"
    output = output_path.read_text(errors="replace") if output_path.exists() else ""
    return GuestResult(int(rc_path.read_text().strip()), output, seconds, console_text)


def run_script(
    kernel: str,
    script: str,
    repo: Path,
    timeout: float = 300,
    env: Optional[Mapping[str, str]] = None,
    *,
    cache: Path = DEFAULT_CACHE,
    share_dir: Optional[Path] = None,
    smp: int = 1,
    arch: str = "amd64",
) -> GuestResult:
    """Boot `kernel` ("5.10", "6.1" or "6.12"; arm64: "6.1" or "6.12") and run `script` with bash
    inside it.

    `env` is exported before the script runs. Files the script writes under /vmio are
    left in `share_dir` when one is given (else a temporary directory, removed after).
    Raises GuestError if the guest does not get as far as reporting an exit status.
    """
    image = GuestImage.locate(kernel, cache, arch)
    repo = repo.resolve()
    if share_dir is not None:
        share_dir.mkdir(parents=True, exist_ok=True)
        _write_inputs(share_dir, script, repo, kernel, env)
        return _boot(image, repo, share_dir, timeout, smp)
    with tempfile.TemporaryDirectory(prefix="tcpaccept-vm-") as tmp:
        vmio = Path(tmp)
        _write_inputs(vmio, script, repo, kernel, env)
        return _boot(image, repo, vmio, timeout, smp)


def run_in_guest(
    kernel: str,
    command: Sequence[str],
    repo: Path,
    timeout: float = 300,
    env: Optional[Mapping[str, str]] = None,
    *,
    cache: Path = DEFAULT_CACHE,
    share_dir: Optional[Path] = None,
    smp: int = 1,
    arch: str = "amd64",
) -> GuestResult:
    """Run one command (an argv list, no shell) inside the guest; see run_script()."""
    script = "exec " + shlex.join(command)
    return run_script(kernel, script, repo, timeout, env, cache=cache, share_dir=share_dir,
                      smp=smp, arch=arch)
