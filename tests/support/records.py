"""Synthetic inputs shaped like the kernel's, for unit tests and the benchmark: a raw
`struct accept_event` record and a log2 histogram filled from values. The product only
decodes and renders these; building them is the tests' business."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tcpaccept.aggregate import LATENCY_SLOTS
from tcpaccept.event import RecordLayout
from tcpaccept.summary import Log2Histogram


def encode_record(layout: RecordLayout, **values: Any) -> bytes:
    """A raw record as the kernel would write it. Missing fields are 0 (fd/listen_fd -1,
    tid = pid); `comm` may be a str, `probe` a name."""
    values.setdefault("tid", values.get("pid", 0))
    values.setdefault("fd", -1)
    values.setdefault("listen_fd", -1)
    comm = values.get("comm", b"")
    if isinstance(comm, str):
        values["comm"] = comm.encode()[:layout.comm_len - 1]
    probe = values.get("probe", 0)
    if isinstance(probe, str):
        values["probe"] = next(k for k, v in layout.probe_names.items() if v == probe)
    return layout.struct.pack(*(values.get(f.name, b"" if f.length else 0)
                                for f in layout.fields))


def histogram_of(values_us: Iterable[float]) -> Log2Histogram:
    """A histogram holding `values_us`, bucketed as the kernel's slots are (slot k holds
    [2^(k-1), 2^k) us, slot 0 holds 0)."""
    slots = [0] * LATENCY_SLOTS
    for value in values_us:
        slots[min(LATENCY_SLOTS - 1, max(0, int(value)).bit_length())] += 1
    return Log2Histogram(slots)
