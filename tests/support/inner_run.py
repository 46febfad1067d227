"""A pytest run inside a test, with this suite's conftest as a plugin: the positive control
of the checks that fail a run (left-over processes, tracers, BPF programs)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_inner_pytest(directory: Path, test_source: str) -> subprocess.CompletedProcess:
    """Run `test_source` as a test module of its own pytest session."""
    module = directory / "test_inner.py"
    module.write_text(textwrap.dedent(test_source))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q",
                           "-p", "no:cacheprovider", "--rootdir", str(directory), "-c",
                           os.devnull, str(module)], cwd=REPO, capture_output=True,
                          text=True, timeout=180)
