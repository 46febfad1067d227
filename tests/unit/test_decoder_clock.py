"""Proposed with the event.py patch: re-anchoring the decoder's wall-clock offset, and
invalid UTF-8 names kept as bytes (surrogateescape)."""

from __future__ import annotations

from tcpaccept.event import Decoder, RecordLayout
from tests.support.records import encode_record


def record(layout: RecordLayout, **fields: object) -> bytes:
    base = dict(ts_ns=5_000, pid=1, family=2, lport=80, rport=9, laddr=b"\x7f\0\0\1" + bytes(12),
                raddr=b"\x7f\0\0\1" + bytes(12), comm=b"nginx")
    base.update(fields)
    return encode_record(layout, **base)


def test_a_new_offset_applies_to_the_next_record_without_recompiling() -> None:
    layout = RecordLayout.from_object()
    decoder = Decoder(layout, boot_to_wall_ns=1_000_000)
    decode = decoder.decode  # the run loop holds this one function
    assert decode(record(layout)).time_ns == 1_005_000
    decoder.boot_to_wall_ns = 3_600_000_000_000  # the wall clock was stepped
    assert decode(record(layout)).time_ns == 3_600_000_005_000


def test_invalid_utf8_comm_keeps_its_bytes() -> None:
    layout = RecordLayout.from_object()
    accept = Decoder(layout, boot_to_wall_ns=0).decode(record(layout, comm=b"bad\xff\xfe"))
    assert accept.comm.encode("utf-8", "surrogateescape") == b"bad\xff\xfe"
