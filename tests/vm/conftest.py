"""Shared set-up for the tests that boot stock Debian kernels under qemu.

The guest images are built (or found up to date) once per session; a failed build is an
error of every vm test, never a skip, so a broken harness cannot pass unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guest import DEFAULT_CACHE, KERNELS, build_images

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
def repo_root() -> Path:
    return REPO


@pytest.fixture(params=sorted(KERNELS, key=lambda k: tuple(map(int, k.split(".")))))
def kernel(request: pytest.FixtureRequest) -> str:
    """Each stock kernel in turn: "5.10", "6.1", "6.12"."""
    return str(request.param)


def pytest_terminal_summary(terminalreporter) -> None:
    """The kernel x method table, for CI logs and closing notes."""
    import test_matrix

    if test_matrix.RESULTS:
        terminalreporter.write_sep("=", "kernel matrix")
        terminalreporter.write_line(test_matrix.matrix_table())
