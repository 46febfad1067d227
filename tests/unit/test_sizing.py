"""Issue 14 item 6: sizes that grow with the CPUs (sizing.py), as arithmetic."""

from __future__ import annotations

import ctypes
import os

import pytest

from tcpaccept import libbpf, sizing
from tcpaccept.pidns import kernel_dev

SLOTS_4MIB = (4 << 20) // 136  # the default ring, in records of this build's size


@pytest.mark.parametrize("cpus", [1, 2, 8, 64, 256, 4096])
def test_all_cpus_together_wake_the_reader_within_an_eighth_of_the_ring(cpus: int) -> None:
    batch = sizing.wakeup_batch(SLOTS_4MIB, cpus)
    # Worst case: every CPU one short of its batch, nobody has woken the reader yet.
    waiting_unannounced = cpus * (batch - 1)
    assert waiting_unannounced <= SLOTS_4MIB // 8 or batch == 1


def test_the_old_rule_let_eight_cpus_fill_the_ring() -> None:
    old_batch = SLOTS_4MIB // 8  # one CPU's eighth, whatever the CPU count
    assert 8 * old_batch >= SLOTS_4MIB * 0.99  # the ring full before any wakeup
    assert 8 * sizing.wakeup_batch(SLOTS_4MIB, 8) <= SLOTS_4MIB // 8


@pytest.mark.parametrize("slots,cpus,batch", [
    (SLOTS_4MIB, 2, 1024),  # capped: this host keeps its measured batch
    (SLOTS_4MIB, 16, SLOTS_4MIB // 128),
    (100, 64, 1),  # a tiny ring on a big host: a wakeup per event, never 0
    (0, 1, 1),
    (1 << 30, 1, sizing.MAX_WAKEUP_BATCH),
    (SLOTS_4MIB, 0, 1024),  # a nonsense CPU count is taken as one
])
def test_wakeup_batch_bounds(slots: int, cpus: int, batch: int) -> None:
    assert sizing.wakeup_batch(slots, cpus) == batch


@pytest.mark.parametrize("cpus,sets", [
    (1, 16384), (2, 16384), (128, 16384),  # as compiled
    (256, 32768), (512, 1 << 16), (8192, 1 << 16),  # grown, then bounded (4 MB)
])
def test_stamp_table_grows_with_cpus(cpus: int, sets: int) -> None:
    assert sizing.stamp_sets(cpus) == sets


@pytest.mark.parametrize("major,minor,kernel", [(0, 4, 4), (0, 300, 300), (8, 1, 8 << 20 | 1)])
def test_namespace_device_in_the_kernel_encoding(major: int, minor: int, kernel: int) -> None:
    assert kernel_dev(os.makedev(major, minor)) == kernel


class _Kprobe(ctypes.Structure):
    _fields_ = [("func_name", ctypes.c_uint64), ("name_len", ctypes.c_uint32),
                ("offset", ctypes.c_uint32), ("addr", ctypes.c_uint64),
                ("missed", ctypes.c_uint64), ("cookie", ctypes.c_uint64)]


class _PerfEvent(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("kprobe", _Kprobe)]


class _Union(ctypes.Union):
    _fields_ = [("perf_event", _PerfEvent), ("aligned", ctypes.c_uint64)]


class _LinkInfo(ctypes.Structure):
    """struct bpf_link_info (UAPI, 6.7+) as the C compiler lays it out, for the perf-event
    member: the hand-kept offsets in libbpf.py must agree with it."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("u", _Union)]


@pytest.mark.parametrize("event_type", [3, 4])  # BPF_PERF_EVENT_KPROBE, _KRETPROBE
def test_kprobe_misses_are_read_where_the_kernel_puts_them(event_type: int) -> None:
    info = _LinkInfo(type=7, id=5, prog_id=9)  # BPF_LINK_TYPE_PERF_EVENT
    info.u.perf_event.type = event_type
    info.u.perf_event.kprobe.addr = 0xFFFFFFFF81000000
    info.u.perf_event.kprobe.missed = 1234
    info.u.perf_event.kprobe.cookie = 77
    assert libbpf.kprobe_missed_of(bytes(info)) == 1234


@pytest.mark.parametrize("link_type,event_type", [(7, 5), (2, 0), (7, 0)])
def test_other_links_have_no_kprobe_misses(link_type: int, event_type: int) -> None:
    info = _LinkInfo(type=link_type)  # a tracepoint perf link, a tracing link, a 6.5 one
    info.u.perf_event.type = event_type
    info.u.perf_event.kprobe.missed = 1234
    assert libbpf.kprobe_missed_of(bytes(info)) is None
