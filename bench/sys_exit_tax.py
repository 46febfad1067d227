#!/usr/bin/env python3
"""What the tracepoint method costs every syscall on the host, attached through tracefs
(root, syscalls:sys_exit_accept{,4}) and without tracefs (CAP_BPF + CAP_PERFMON only: the
accept programs at the raw sys_exit tracepoint, run for every syscall, bpf/sys_exit.bpf.h).

    python bench/sys_exit_tax.py [--rounds 5] [--calls 2000000]

ns per getppid() in a tight C loop (bench/syscall_tax.py), alternately untraced and with
each tracer attached; prints the medians and the tax over untraced. Needs root and cc.
Both tracers run as root here; TCPACCEPT_TRACEPOINT_ATTACH=sys_exit forces the attach a
non-root user gets (the programs and the attach are the same; only the loader's uid differs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, ContextManager, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "src"))

from bench.syscall_tax import syscall_tax  # noqa: E402
from tcpaccept.run import BANNER  # noqa: E402
from tests.support.child import Child  # noqa: E402


def tcpaccept_attached(extra_env: dict[str, str]) -> Callable[[], ContextManager]:
    @contextlib.contextmanager
    def attach() -> Iterator[None]:
        # -P 1: nothing is reported, only the per-syscall dispatch is measured.
        child = Child([sys.executable, "-m", "tcpaccept.cli", "--probe", "tracepoint",
                       "--no-io-uring", "-P", "1"], env=dict(os.environ, **extra_env))
        try:
            child.wait_for_text(BANNER, timeout=30)
            yield
        finally:
            child.stop()
    return attach


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2_000_000)
    args = parser.parse_args()
    tracers = {"tracefs": tcpaccept_attached({}),
               "sys_exit": tcpaccept_attached({"TCPACCEPT_TRACEPOINT_ATTACH": "sys_exit"})}
    with tempfile.TemporaryDirectory() as workdir:
        result = syscall_tax(Path(workdir), tracers, args.rounds, args.calls)
    del result["samples"]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
