"""Builds edited copies of the BPF object: the ABI tests' way to change the record's
header (swap, rename, resize a field) and see what tcpaccept makes of it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

BPF_SOURCES = Path(__file__).resolve().parents[2] / "src" / "tcpaccept" / "bpf"


def build_variant(workdir: Path, edits: dict[str, Callable[[str], str]]) -> Path:
    """Copy the BPF sources to workdir, apply edits {file name: text -> text}, build with
    the project's Makefile, return the object. An edit that changes nothing is an error:
    the variant would silently be the original."""
    for src in BPF_SOURCES.iterdir():
        if src.suffix in (".c", ".h") or src.name == "Makefile":
            shutil.copy(src, workdir / src.name)
    for name, edit in edits.items():
        path = workdir / name
        before = path.read_text()
        after = edit(before)
        assert after != before, f"edit of {name} changed nothing: the header moved on?"
        path.write_text(after)
    build = subprocess.run(["make", "-s", "-C", str(workdir)], capture_output=True, text=True,
                           timeout=120)
    assert build.returncode == 0, f"variant does not build:\n{build.stdout}{build.stderr}"
    return workdir / "tcpaccept.bpf.o"


def _member_line(name: str) -> re.Pattern:
    """A member declaration of struct accept_event, e.g. `\t__u16 lport;   /* ... */`."""
    return re.compile(rf"^\t[^\n;]*\b{re.escape(name)}(\[[^\]]*\])?;[^\n]*$", re.M)


def swap_members(a: str, b: str) -> Callable[[str], str]:
    """Swap two member declarations (of the same size, so the record keeps its size)."""
    def edit(text: str) -> str:
        line_a, line_b = _member_line(a).search(text), _member_line(b).search(text)
        assert line_a and line_b, f"no member {a} or {b} in the header"
        first, second = sorted((line_a, line_b), key=lambda m: m.start())
        return (text[:first.start()] + second.group(0) + text[first.end():second.start()]
                + first.group(0) + text[second.end():])
    return edit


def replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        return text.replace(old, new)
    return edit
