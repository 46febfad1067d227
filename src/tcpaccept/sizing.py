"""Sizes that must grow with the number of CPUs (big hosts), as pure arithmetic.

tracer.py applies them before load: the reader's wakeup batch (.rodata) and the capacity
of the queue-latency LRU map (established_at).
"""

from __future__ import annotations

MAX_WAKEUP_BATCH = 1024
# The queue-latency stamps (child sock -> ESTABLISHED time): 16k as compiled, more per CPU.
ESTABLISHED_MIN_ENTRIES = 16384
ESTABLISHED_PER_CPU = 512
ESTABLISHED_MAX_ENTRIES = 1 << 18  # ~20 MB of preallocated LRU elements


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


def established_entries(cpus: int) -> int:
    """Capacity of established_at, a common (not per-CPU) LRU hash.

    Common, not BPF_F_NO_COMMON_LRU: a stamp is written on the CPU that completes the
    handshake (the NIC queue's, or on loopback the client's) and removed on the CPU that
    accepts; with per-CPU LRU lists each CPU may only evict within its own 1/N share, so
    skewed RSS (one busy queue) would get a fraction of the map. The common LRU's cost on
    big hosts is that each CPU keeps up to 128 free elements of its own (LOCAL_FREE_TARGET):
    16k entries are all parked on 128 CPUs, and live stamps are evicted from a nearly empty
    map. 512 per CPU leaves room beyond those reserves; bounded for memory."""
    wanted = max(ESTABLISHED_MIN_ENTRIES, ESTABLISHED_PER_CPU * max(1, cpus))
    return min(ESTABLISHED_MAX_ENTRIES, wanted)
