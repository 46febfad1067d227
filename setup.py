"""Build hook: the wheel carries the compiled CO-RE object, so installing it needs no clang.

Everything else is declared in pyproject.toml. At build time `build_py` runs the BPF
Makefile (clang) unless an up-to-date tcpaccept.bpf.o is already there (a checkout where
scripts/setup.sh ran, or an sdist that ships the object): then it is reused as is, and a
machine without clang can still build the wheel.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

BPF_DIR = Path(__file__).resolve().parent / "src" / "tcpaccept" / "bpf"
BPF_OBJECT = BPF_DIR / "tcpaccept.bpf.o"
BPF_OBJECTS = [BPF_OBJECT, BPF_DIR / "listeners.bpf.o"]  # the Makefile's `all`



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
            subprocess.run(["make", "-s", "-C", str(BPF_DIR)], check=True)
        # package_data globs may have been expanded before the object existed.
        self.__dict__.pop("data_files", None)
        super().run()


def _bdist_wheel_for_this_arch():
    """The object is compiled for one architecture (pt_regs layout, __TARGET_ARCH_*), so the
    wheel is tagged py3-none-<platform>: any Python 3, this CPU only."""
    try:
        from setuptools.command.bdist_wheel import bdist_wheel
    except ImportError:  # setuptools < 70.1 (Debian 12 ships 66): the wheel package has it
        try:
            from wheel.bdist_wheel import bdist_wheel
        except ImportError:  # no wheel to build (sdist, egg-info): nothing to tag
            return None

    class BdistWheelForThisArch(bdist_wheel):
        def get_tag(self) -> tuple[str, str, str]:
            _, _, platform = super().get_tag()
            return "py3", "none", platform

    return BdistWheelForThisArch


class DistributionWithBpfObject(Distribution):
    """Not pure: the files go to platlib, the root of a platform wheel."""

    def has_ext_modules(self) -> bool:
        return True


commands: dict = {"build_py": BuildPyWithBpfObject}
if (bdist_wheel_command := _bdist_wheel_for_this_arch()) is not None:
    commands["bdist_wheel"] = bdist_wheel_command
setup(cmdclass=commands, distclass=DistributionWithBpfObject)
