"""How fast and lean a tracer starts: exec -> banner -> one accept's line; peak RSS."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench.common import TracerFailed
from bench.variants import LABELS, Variant
from tcpaccept.run import BANNER
from tests.support.child import Child, ChildError


@dataclass
class StartSample:
    kind: str
    banner_s: float
    first_event_s: float
    hwm_kb: Optional[int]
    maxrss_kb: Optional[int]


@functools.cache
def compile_bytecode(tool: Path) -> None:
    """Compile the tool's package once, as pip does when it installs the wheel. From a
    source checkout under PYTHONDONTWRITEBYTECODE=1 every start would otherwise compile
    all its modules again (the imports: 1,594M instructions instead of 257M, callgrind):
    a cost no installed tcpaccept pays, and one that grows with every module added."""
    python = tool.parent / "python"
    subprocess.run([str(python if python.exists() else "python3"), "-c",
                    "import compileall, os, tcpaccept; compileall.compile_dir("
                    "os.path.dirname(tcpaccept.__file__), quiet=1)"], check=True)


def start_sample(variant: Variant, tool: Path) -> StartSample:
    """Time from exec to the banner line, then to the line of one connection made right
    after it; VmHWM before SIGINT and ru_maxrss after exit."""
    assert variant.kind in ("text", "peer")
    if variant.kind == "text":
        compile_bytecode(tool)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    me = str(os.getpid())

    def is_ours(line: str) -> bool:
        fields = line.split()
        if variant.kind == "peer":
            return len(fields) >= 4 and fields[1] == me
        return len(fields) >= 8 and fields[1] == me and fields[-2] == str(port)

    child = Child(variant.command(tool, 0), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  new_session=True)
    try:
        banner_s = child.wait_for_line(lambda line: line.strip() == BANNER, what="banner")
        with socket.create_connection(("127.0.0.1", port)):
            peer, _ = listener.accept()
            peer.close()
        first_s = child.wait_for_line(is_ours, what="line for its first accept")
    except ChildError as exc:
        raise TracerFailed(f"start sample of {LABELS[variant.kind]}: {exc}") from None
    finally:
        listener.close()
        child.stop(resend_every=0.5 if variant.kind == "peer" else None)
    return StartSample(variant.kind, banner_s, first_s, child.hwm_kb, child.maxrss_kb)
