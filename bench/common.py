"""Paths, logging, errors and tool checks every part of the benchmark uses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PEER_SCRIPT = BENCH / "peer_tcpaccept.bt"
RESULTS = BENCH / "results"
DEFAULT_JSON = RESULTS / "latest.json"
DEFAULT_TOOL = REPO / ".venv" / "bin" / "tcpaccept"

# Debian package for each command the bench runs.
TOOLS = {"nginx": "nginx-light", "wrk": "wrk", "bpftrace": "bpftrace", "bpftool": "bpftool"}


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The bench itself cannot go on (exit 2)."""


class TracerFailed(Exception):
    """tcpaccept or the peer could not start or failed (a 'broken' result, exit 1)."""


def which(cmd: str) -> str:
    found = shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise BenchError(f"{cmd} not found")
    return found


def _have(cmd: str) -> Optional[str]:
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/usr/bin:/sbin:/bin")


def ensure_tools(tool: Path) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: tracing needs it")
    missing = [pkg for cmd, pkg in TOOLS.items() if not _have(cmd)]
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
