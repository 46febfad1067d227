"""Sizes that must grow with the number of CPUs (big hosts), as pure arithmetic.

tracer.py applies them before load: the reader's wakeup batch (.rodata) and the capacity
of the queue-latency stamp table (queue_stamps).
"""

from __future__ import annotations

MAX_WAKEUP_BATCH = 1024
# The queue-latency stamp table's sets: 16k as compiled, more past 128 CPUs, at most 4 MB.
STAMP_MIN_SETS = 16384
STAMP_SETS_PER_CPU = 128
STAMP_MAX_SETS = 1 << 16


def wakeup_batch(ring_slots: int, cpus: int) -> int:
    """Events a CPU submits before it wakes the reader.

    Each CPU counts only its own unannounced events while the ring is shared by all: in the
    worst case every CPU holds batch - 1 of them, so cpus * batch records can wait with no
    wakeup. An eighth of the ring per CPU (the old rule) let 8 CPUs fill the ring before any
    wakeup, leaving only the 50 ms poll. Dividing by the CPUs keeps all of them together at
    an eighth of the ring, the headroom one CPU had. Bounded: at least 1 (a wakeup per event
    on a tiny ring or a huge host), at most 1024 (past that the saving is nil and a lone
    burst waits longer for the poll)."""
    return max(1, min(MAX_WAKEUP_BATCH, ring_slots // (8 * max(1, cpus))))


def stamp_sets(cpus: int) -> int:
    """Sets of the queue-latency stamp table (queue_stamps.bpf.h: 4 stamps each, 64 bytes).

    A stamp is lost only when a set holds 4 newer children still waiting in accept queues,
    so the table is sized for the children that can wait at once: 16384 sets (65,536
    stamps, 1 MB) from the start, more on big hosts, which run more listeners."""
    return min(STAMP_MAX_SETS, max(STAMP_MIN_SETS, STAMP_SETS_PER_CPU * max(1, cpus)))
