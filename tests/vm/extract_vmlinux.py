#!/usr/bin/python3
"""Pull the uncompressed ELF kernel out of a bzImage (vmlinuz).

Why: under TCG the in-kernel decompressor takes many seconds per boot; qemu can boot
the ELF directly through its PVH entry note (`-kernel vmlinux`), so we unpack once at
build time. A bzImage carries the compressed kernel somewhere after the setup code: we
look for each compressor's magic bytes and keep the first candidate that unpacks to an
ELF image. Usage: extract_vmlinux.py VMLINUZ OUT
"""

from __future__ import annotations

import bz2
import lzma
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable, Optional

ELF_MAGIC = b"\x7fELF"


def _gunzip(data: bytes) -> bytes:
    # wbits=31: gzip header; decompressobj ignores the bzImage trailer after the stream.
    return zlib.decompressobj(31).decompress(data)


def _unxz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _unlzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)


def _bunzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


def _with_tool(tool: str) -> Callable[[bytes], bytes]:
    """Compressors without a stdlib module (zstd, lz4) go through their command-line tool;
    it complains about the trailing bytes after the frame, so its exit code is ignored."""

    def run(data: bytes) -> bytes:
        if shutil.which(tool) is None:
            return b""
        proc = subprocess.run([tool, "-dc"], input=data, capture_output=True, check=False)
        return proc.stdout

    return run


# (magic bytes, decompressor) in the order the kernel's own extract script tries them.
FORMATS: list[tuple[bytes, Callable[[bytes], bytes]]] = [
    (b"\x1f\x8b\x08", _gunzip),
    (b"\xfd7zXZ\x00", _unxz),
    (b"BZh", _bunzip2),
    (b"\x5d\x00\x00\x00", _unlzma),
    (b"\x02\x21\x4c\x18", _with_tool("lz4")),
    (b"\x28\xb5\x2f\xfd", _with_tool("zstd")),
]


def _offsets(blob: bytes, magic: bytes) -> list[int]:
    found: list[int] = []
    pos = blob.find(magic)
    while pos != -1:
        found.append(pos)
        pos = blob.find(magic, pos + 1)
    return found


def extract(blob: bytes) -> Optional[bytes]:
    for magic, decompress in FORMATS:
        for pos in _offsets(blob, magic):
            try:
                out = decompress(blob[pos:])
            except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error):
                continue
            if out.startswith(ELF_MAGIC):
                return out
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    image = extract(Path(argv[1]).read_bytes())
    if image is None:
        print(f"extract_vmlinux: no compressed ELF kernel found in {argv[1]}", file=sys.stderr)
        return 1
    Path(argv[2]).write_bytes(image)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
