"""The wheel: `pip wheel .` compiles the CO-RE object (or reuses an up-to-date one) and ships
it with the man page; installed in a fresh venv on a PATH without clang, tcpaccept works.
One wheel per machine (x86_64, aarch64), each with its own object, both built on this host;
tests/vm/test_arm64.py runs the aarch64 one in an arm64 guest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.fleet.deployment import ROOT

OBJECT = "tcpaccept/bpf/tcpaccept.bpf.o"
LISTENERS_OBJECT = "tcpaccept/bpf/listeners.bpf.o"  # the iterator: one for every machine
MAN_PAGE = "data/share/man/man8/tcpaccept.8"
MACHINES = ("x86_64", "aarch64")
BPF_DIR = ROOT / "src" / "tcpaccept" / "bpf"


def pip_wheel(source: Path, out: Path, path: str, machine: str = "") -> Path:
    """`pip wheel` as a user runs it (isolated build: setuptools from the index), for this
    machine or the one named."""
    env = dict(os.environ, PATH=path, PIP_DISABLE_PIP_VERSION_CHECK="1",
               TCPACCEPT_TARGET_MACHINE=machine)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                             "-w", str(out), str(source)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("tcpaccept-*.whl")
    return wheel


def copy_checkout(dest: Path, with_object: bool) -> Path:
    """The files git tracks (plus, if asked, the objects setup.sh built): a clean checkout."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.split()
    if with_object:
        files += [f"src/tcpaccept/bpf/{machine}/tcpaccept.bpf.o" for machine in MACHINES]
        files.append(f"src/{LISTENERS_OBJECT}")
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(("tests/", "bench/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def no_compiler_bin(tmp: Path) -> Path:
    """A directory of links to a few basic tools: with the venv, the whole PATH (no clang,
    llvm, cc or gcc, which Debian keeps in /usr/bin next to everything else)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "bash", "uname", "env", "cat", "ls", "git"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return bin_dir


@pytest.fixture(scope="module")
def wheel_from_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a checkout without the object: clang compiles it at build time."""
    tmp = tmp_path_factory.mktemp("wheel-src")
    source = copy_checkout(tmp / "src", with_object=False)
    assert not list((source / "src" / "tcpaccept" / "bpf").glob("**/*.o"))
    return pip_wheel(source, tmp / "dist", os.environ["PATH"])


def test_wheel_carries_object_and_man_page(wheel_from_source: Path) -> None:
    names = zipfile.ZipFile(wheel_from_source).namelist()
    assert OBJECT in names
    page = [n for n in names if n.endswith(MAN_PAGE)]
    assert page, names
    with zipfile.ZipFile(wheel_from_source) as wheel:
        assert wheel.read(OBJECT)[:4] == b"\x7fELF"
        assert wheel.read(page[0]) == (ROOT / "man" / "tcpaccept.8").read_bytes()
    # Any Python 3, one architecture: the object is compiled for this CPU's pt_regs.
    assert wheel_from_source.name.endswith(f"-py3-none-linux_{os.uname().machine}.whl")


@pytest.mark.parametrize("machine", MACHINES)
def test_wheel_per_machine_carries_that_machines_object(tmp_path: Path, machine: str) -> None:
    """Cross-built from a checkout without objects: each wheel has its own (the two differ:
    pt_regs, syscall numbers) under the one name the package loads."""
    source = copy_checkout(tmp_path / "src", with_object=False)
    wheel = pip_wheel(source, tmp_path / "dist", os.environ["PATH"], machine)
    assert wheel.name.endswith(f"-py3-none-linux_{machine}.whl")
    with zipfile.ZipFile(wheel) as archive:
        objects = [n for n in archive.namelist() if n.endswith(".o")]
        assert sorted(objects) == [LISTENERS_OBJECT, OBJECT]
        assert archive.read(OBJECT) == (BPF_DIR / machine / "tcpaccept.bpf.o").read_bytes()
    other = next(m for m in MACHINES if m != machine)
    assert (BPF_DIR / machine / "tcpaccept.bpf.o").read_bytes() != \
        (BPF_DIR / other / "tcpaccept.bpf.o").read_bytes()


def test_unknown_machine_is_refused_in_one_line(tmp_path: Path) -> None:
    source = copy_checkout(tmp_path / "src", with_object=False)
    env = dict(os.environ, TCPACCEPT_TARGET_MACHINE="riscv64", PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                             str(tmp_path / "dist"), str(source)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert "tcpaccept builds for x86_64, aarch64, not 'riscv64'" in result.stdout + result.stderr


@pytest.mark.parametrize("machine", MACHINES)
def test_prebuilt_object_is_reused_without_clang(tmp_path: Path, machine: str) -> None:
    source = copy_checkout(tmp_path / "src", with_object=True)
    built = source / "src" / "tcpaccept" / "bpf" / machine / "tcpaccept.bpf.o"
    assert built.is_file(), "no object: run scripts/setup.sh first"
    os.utime(built)  # newer than its sources, as after `make`
    os.utime(source / "src" / LISTENERS_OBJECT)
    before = built.read_bytes()
    bin_dir = no_compiler_bin(tmp_path)
    assert shutil.which("clang", path=str(bin_dir)) is None
    wheel = pip_wheel(source, tmp_path / "dist", f"{Path(sys.executable).parent}:{bin_dir}",
                      machine)
    assert zipfile.ZipFile(wheel).read(OBJECT) == before


def test_installed_wheel_works_without_clang(wheel_from_source: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                              "--disable-pip-version-check", str(wheel_from_source)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    # Only the venv and a few basic tools: no clang, no checkout on sys.path.
    bin_dir = no_compiler_bin(tmp_path)
    env = {"PATH": f"{venv / 'bin'}:{bin_dir}", "HOME": str(tmp_path), "LC_ALL": "C.UTF-8"}
    assert shutil.which("clang", path=env["PATH"]) is None

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)

    check = run("tcpaccept", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "auto would pick: none" not in check.stdout
    version = run("python", "-m", "tcpaccept", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "tcpaccept 0.1.0"
    located = run("python", "-c", "import tcpaccept; print(tcpaccept.__file__)")
    assert located.stdout.startswith(str(venv)), located.stdout
    page = venv / "share" / "man" / "man8" / "tcpaccept.8"
    assert page.is_file()
    # man-db finds <venv>/share/man from <venv>/bin on PATH.
    where = subprocess.run(["man", "-w", "tcpaccept"], capture_output=True, text=True,
                           env=dict(env, PATH=f"{venv / 'bin'}:/usr/bin:/bin"), timeout=60)
    assert where.stdout.strip() == str(page), where.stdout + where.stderr
