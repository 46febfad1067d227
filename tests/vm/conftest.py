"""Shared set-up for the tests that boot stock Debian kernels under qemu.

The guest images are built (or found up to date) once per session; a failed build is an
error of every vm test, never a skip, so a broken harness cannot pass unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guest import ARM64_CACHE, DEFAULT_CACHE, KERNELS, build_images

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def vm_cache() -> Path:
    """The cache directory holding built guest images (built here if needed)."""
    build_images(DEFAULT_CACHE)
    # The guests have no compiler: their io_uring tests run the liburing servers built
    # here (static binaries, in the project tree the guests share).
    from tests.support.uring import binary

    binary("accept_server")
    return DEFAULT_CACHE


@pytest.fixture(scope="session")
def arm64_cache() -> Path:
    """The arm64 guest images (their own cache subdirectory), and the io_uring test server
    cross-compiled for aarch64 against the arm64 liburing unpacked there."""
    build_images(ARM64_CACHE, arch="arm64")
    from tests.support.uring import binary

    binary("accept_server", machine="aarch64", liburing=ARM64_CACHE / "liburing")
    return ARM64_CACHE


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(params=sorted(KERNELS, key=lambda k: tuple(map(int, k.split(".")))))
def kernel(request: pytest.FixtureRequest) -> str:
    """Each stock kernel in turn: "5.10", "6.1", "6.12"."""
    return str(request.param)


def pytest_terminal_summary(terminalreporter) -> None:
    """The kernel x method tables, for CI logs and closing notes."""
    import test_arm64
    import test_matrix

    if test_matrix.RESULTS:
        terminalreporter.write_sep("=", "kernel matrix")
        terminalreporter.write_line(test_matrix.matrix_table())
    if test_arm64.RESULTS:
        terminalreporter.write_sep("=", "arm64 kernel matrix")
        terminalreporter.write_line(test_arm64.arm64_table())
