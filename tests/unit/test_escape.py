"""Untrusted strings in text output (issue 11 item 3): nothing unprintable reaches the
terminal raw, every escape is unambiguous, and the common case costs a dict lookup."""

from __future__ import annotations

import json
import time

import pytest

from tcpaccept.output.escape import escape_text


def invalid_utf8(raw: bytes) -> str:
    """What a decoder with errors="surrogateescape" makes of the kernel's bytes."""
    return raw.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("name,shown", [
    ("nginx", "nginx"),
    ("gunicorn: worker", "gunicorn: worker"),
    ("nginx\u2192", "nginx\u2192"),  # printable Unicode is shown as it is
    ("\x1b[31mEV\nX 1", "\\x1b[31mEV\\nX 1"),
    ("a\tb\rc", "a\\tb\\rc"),
    ("bell\x07\x7f", "bell\\x07\\x7f"),
    ("back\\slash", "back\\\\slash"),  # so `\x1b` in a name cannot pass for an escape
    ("\\x1b", "\\\\x1b"),
    ("csi\u009b2J", "csi\\u009b2J"),  # C1 control: CSI for some terminals
    ("evil\u202eexe.txt", "evil\\u202eexe.txt"),  # right-to-left override
    ("line\u2028sep", "line\\u2028sep"),
    ("nb\u00a0sp", "nb\\u00a0sp"),
    (invalid_utf8(b"bad\xff\xfe"), "bad\\xff\\xfe"),
    (invalid_utf8(b"\xc3"), "\\xc3"),  # a truncated UTF-8 sequence
    ("", ""),
])
def test_unprintable_characters_are_escaped(name: str, shown: str) -> None:
    assert escape_text(name) == shown


def test_an_escaped_name_is_one_line_of_printable_ascii_or_printable_unicode() -> None:
    every_code_point = "".join(map(chr, range(0x3000))) + invalid_utf8(bytes(range(0x80, 256)))
    shown = escape_text(every_code_point)
    assert shown.isprintable()
    assert "\n" not in shown and "\x1b" not in shown


def test_escapes_read_back_to_the_original_bytes() -> None:
    """The escape is a faithful notation: undoing it gives back exactly what the kernel had."""
    raw = b"\x1b[31mEV\nX 1\\\xff\xc3\xa9\t"
    shown = escape_text(invalid_utf8(raw))
    # \\xNN stands for a byte, \\n \\t \\r \\\\ for themselves; the rest is UTF-8
    # (unicode_escape reads unescaped bytes as latin-1, so latin-1 gives them back as is).
    back = shown.encode("utf-8").decode("unicode_escape").encode("latin-1")
    assert back == raw


def test_json_of_the_same_name_is_valid_and_lossless() -> None:
    name = invalid_utf8(b"\x1b[31mEV\nX 1\xff")
    line = json.dumps({"comm": name})
    assert line.isascii() and "\n" not in line
    assert json.loads(line)["comm"].encode("utf-8", "surrogateescape") == \
        b"\x1b[31mEV\nX 1\xff"


def test_cached_lookup_keeps_the_text_path_fast() -> None:
    names = [f"worker-{i}" for i in range(50)] + ["\x1b[31mEV\nX 1"]
    rows = 300_000
    start = time.perf_counter()
    for i in range(rows):
        escape_text(names[i % len(names)])
    elapsed = time.perf_counter() - start
    # 300k rows must cost well under a second of the text path's budget.
    assert elapsed < 0.25, f"{rows / elapsed:,.0f} lookups/s"


def test_the_cache_is_bounded() -> None:
    from tcpaccept.output import escape

    for i in range(20_000):
        escape_text(f"name-{i}")
    assert len(escape._cache) <= escape._CACHE_LIMIT
