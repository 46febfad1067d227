"""Untrusted strings (process names, cgroup paths, container and pod names) made safe for a
terminal and for line-oriented tools.

Any string the traced system chooses can hold an escape sequence (`\\x1b[31m` colours the
terminal, `\\x1b]52;...` writes the clipboard) or a newline that forges a second row. Text
output therefore shows such characters escaped, the way `ls -b`, `systemd-escape` and
journalctl users read them:

- `\\n`, `\\t`, `\\r` and `\\\\` (a literal backslash is doubled, so an escape in the output
  always means the name held something unprintable, never that the name spelled it out);
- `\\xNN` for every other byte that is not printable: C0 controls, DEL, and the bytes of
  invalid UTF-8 (decoded upstream with ``errors="surrogateescape"``, where byte 0xNN becomes
  U+DCNN: `\\xNN` gives the original byte back);
- `\\uNNNN` / `\\UNNNNNNNN` for a printable-looking-but-not character: C1 controls
  (U+0080-U+009F, which some terminals read as CSI), bidirectional overrides and other
  format characters, line and paragraph separators, unassigned code points.

Printable Unicode (`nginx→`, `café`) and spaces are shown as they are.

JSON output does not use this: ``json.dumps`` escapes every control character (`\\u001b`,
`\\n`) and stays lossless; invalid UTF-8 bytes reach it as lone surrogates and are written
as `\\udcNN` escapes, which Python's json module reads back to the same str
(``.encode("utf-8", "surrogateescape")`` gives the original bytes); a strict UTF-8 JSON
reader sees U+FFFD there instead.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}
# Bounded like the decoder's caches: a host has few distinct names, an attacker may make many.
_CACHE_LIMIT = 4096
_cache: dict[str, str] = {}
# The cache's lookup, for formatters that inline the hit (None on a miss). The dict is only
# ever cleared, never replaced, so this stays bound to it.
escaped_lookup = _cache.get


def _escape_char(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x80:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: one byte of invalid UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape(text: str) -> str:
    return "".join(ch if ch.isprintable() and ch != "\\" else _escape_char(ch) for ch in text)


def escape_text(text: str) -> str:
    """``text`` with every unprintable character escaped; one line, never raw control bytes.

    Cached: the same few names repeat on every row, so a row costs one dict lookup."""
    hit = _cache.get(text)
    if hit is not None:
        return hit
    shown = text if text.isprintable() and "\\" not in text else _escape(text)
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    _cache[text] = shown
    return shown
