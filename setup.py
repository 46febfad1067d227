"""Build hook: the wheel carries the compiled CO-RE object, so installing it needs no clang.

Everything else is declared in pyproject.toml. The object is compiled for one machine
(x86_64 or aarch64: pt_regs, syscall numbers), so is the wheel: this machine's, or the one
named by $TCPACCEPT_TARGET_MACHINE (any host builds both):
    TCPACCEPT_TARGET_MACHINE=aarch64 pip wheel .      ->  tcpaccept-*-py3-none-linux_aarch64.whl
At build time `build_py` runs the BPF Makefile (clang) unless an up-to-date
<machine>/tcpaccept.bpf.o is already there (a checkout where scripts/setup.sh ran, or an
sdist that ships the objects): then it is reused as is, and a machine without clang can
still build the wheel. Whatever the machine, the wheel has it at tcpaccept/bpf/tcpaccept.bpf.o.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

BPF_DIR = Path(__file__).resolve().parent / "src" / "tcpaccept" / "bpf"
OBJECT_NAME = "tcpaccept.bpf.o"
TARGET_ENV = "TCPACCEPT_TARGET_MACHINE"
MACHINES = ("x86_64", "aarch64")  # the Makefile's, named as `uname -m` and wheel tags do


def _target_machine() -> str:
    machine = os.environ.get(TARGET_ENV) or platform.machine()
    if machine not in MACHINES:
        raise SystemExit(f"tcpaccept builds for {', '.join(MACHINES)}, not {machine!r} "
                         f"(set {TARGET_ENV} to one of them)")
    return machine


TARGET_MACHINE = _target_machine()
BPF_OBJECT = BPF_DIR / TARGET_MACHINE / OBJECT_NAME
# The listener iterator reads no registers: one object for every machine.
LISTENERS_OBJECT = BPF_DIR / "listeners.bpf.o"
BPF_OBJECTS = [BPF_OBJECT, LISTENERS_OBJECT]


def _bpf_sources() -> list[Path]:
    """Everything the object is built from: the C file, every header, the Makefile."""
    return [*BPF_DIR.glob("*.c"), *BPF_DIR.glob("*.h"), BPF_DIR / "Makefile"]


def _object_is_current() -> bool:
    if not all(obj.is_file() for obj in BPF_OBJECTS):
        return False
    built = min(obj.stat().st_mtime for obj in BPF_OBJECTS)
    return all(source.stat().st_mtime <= built for source in _bpf_sources())


class BuildPyWithBpfObject(build_py):
    def run(self) -> None:
        if not _object_is_current():
            if shutil.which("make") is None or shutil.which("clang") is None:
                raise SystemExit(
                    f"building {BPF_OBJECT.name} needs make and clang (Debian: clang "
                    "libbpf-dev linux-libc-dev make), or a prebuilt, up-to-date object")
            subprocess.run(["make", "-s", "-C", str(BPF_DIR),
                            f"{TARGET_MACHINE}/{OBJECT_NAME}", LISTENERS_OBJECT.name], check=True)
        # package_data globs may have been expanded before the object existed.
        self.__dict__.pop("data_files", None)
        super().run()
        # Always copied: build/lib may hold another machine's object from a previous build,
        # newer than this one, which build_py's "up to date" check would keep.
        staged = Path(self.build_lib) / "tcpaccept" / "bpf" / OBJECT_NAME
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BPF_OBJECT, staged)


def _bdist_wheel_for_target():
    """The object is compiled for one architecture (pt_regs layout, __TARGET_ARCH_*), so the
    wheel is tagged py3-none-linux_<machine>: any Python 3, that CPU only."""
    try:
        from setuptools.command.bdist_wheel import bdist_wheel
    except ImportError:  # setuptools < 70.1 (Debian 12 ships 66): the wheel package has it
        try:
            from wheel.bdist_wheel import bdist_wheel
        except ImportError:  # no wheel to build (sdist, egg-info): nothing to tag
            return None

    class BdistWheelForTarget(bdist_wheel):
        def get_tag(self) -> tuple[str, str, str]:
            return "py3", "none", f"linux_{TARGET_MACHINE}"

    return BdistWheelForTarget


class DistributionWithBpfObject(Distribution):
    """Not pure: the files go to platlib, the root of a platform wheel."""

    def has_ext_modules(self) -> bool:
        return True


commands: dict = {"build_py": BuildPyWithBpfObject}
if (bdist_wheel_command := _bdist_wheel_for_target()) is not None:
    commands["bdist_wheel"] = bdist_wheel_command
setup(cmdclass=commands, distclass=DistributionWithBpfObject)
