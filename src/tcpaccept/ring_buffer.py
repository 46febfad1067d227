"""The tracer's BPF ring buffer, read in user space.

MappedRing (x86-64) reads the kernel's ring directly through its mmap'd pages; RingBuffer
(elsewhere) consumes it through libbpf's ring_buffer API. Both wait with the GIL released
and hand back a batch of copied records.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import platform
import select
from typing import Optional, Union

from .libbpf import LIBBPF_SONAME, RING_SAMPLE_FN, Map, _check_ptr, _check_rc, lib

# One struct epoll_event: 12 bytes on x86-64 (packed), 16 elsewhere.
_EPOLL_EVENT_BYTES = 16


class _Calls:
    """The foreign calls of the event loop, typed once.

    The wait releases the GIL (ctypes.CDLL): the writer thread runs meanwhile, and a signal
    ends it with EINTR. The consume keeps the GIL (ctypes.PyDLL): it runs one Python
    callback per record, and a callback entered from a call that had released the GIL must
    take it back each time, about as costly as the record's decode and format together
    (py-spy, text mode under nginx load).
    """

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.epoll_wait = libc.epoll_wait
        self.epoll_wait.restype = ctypes.c_int
        self.epoll_wait.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self.consume = ctypes.PyDLL(LIBBPF_SONAME).ring_buffer__consume
        self.consume.restype = ctypes.c_int
        self.consume.argtypes = [ctypes.c_void_p]


@functools.cache
def _foreign() -> _Calls:
    return _Calls()


class _Waiter:
    """epoll_wait on one epoll fd with the GIL released; a signal ends it (EINTR) so the
    run loop sees its stop flag at once (select.epoll would retry, PEP 475)."""

    def __init__(self, epoll_fd: int) -> None:
        self._calls = _foreign()
        self._epoll_fd = epoll_fd
        self._event = ctypes.create_string_buffer(_EPOLL_EVENT_BYTES)

    def wait(self, timeout_ms: int) -> bool:
        ready = self._calls.epoll_wait(self._epoll_fd, self._event, 1, timeout_ms)
        if ready < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                return False
            _check_rc(-err, "wait for the ring buffer")
        return ready > 0


# The kernel's record header (include/uapi/linux/bpf.h): a u32 length whose top bits say
# the record is still being written (BUSY) or was discarded, then a u32 of kernel use.
_BUSY_BIT = 1 << 31
_DISCARD_BIT = 1 << 30
_LENGTH_MASK = _DISCARD_BIT - 1
_HEADER_BYTES = 8


class MappedRing:
    """The ring's pages mapped as the kernel lays them out for a consumer (kernel/bpf/
    ringbuf.c): the consumer position (one writable page), the producer position (one
    read-only page), then the data twice in a row, so a record that wraps reads straight.

    A batch costs one Python loop over the headers and one copy per record, where libbpf's
    consume makes a Python callback per record. Correct on x86-64 only: its stores and loads
    are not reordered with others of their kind (TSO), so the plain loads here see a
    record's bytes once its header is no longer BUSY (the kernel clears the bit after
    writing them), and the consumer position, stored after the batch's copies, frees the
    space only once they are done. Other machines need barriers Python cannot issue.
    """

    def __init__(self, ring_map: Map) -> None:
        page = mmap.PAGESIZE
        size = ring_map.max_entries
        fd = ring_map.fd
        self._consumer_page = mmap.mmap(fd, page, mmap.MAP_SHARED,
                                        mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._pages = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                    offset=page)
        except OSError:
            self._consumer_page.close()
            raise
        # Native-order 8-byte views: one load or store each (struct's "<" reads bytewise).
        self._consumer_pos = memoryview(self._consumer_page).cast("Q")
        self._producer_pos = memoryview(self._pages)[:8].cast("Q")
        self._words = memoryview(self._pages).cast("I")  # headers are 8-byte aligned
        self._data_start = page
        self._mask = size - 1
        self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)
        self._waiter = _Waiter(self._epoll.fileno())

    def wait(self, timeout_ms: int) -> bool:
        """Until the kernel wakes the reader or timeout_ms passes; False on timeout or when
        a signal interrupted the wait (the caller then looks at its stop flag)."""
        return self._waiter.wait(timeout_ms)

    def consume(self) -> list[bytes]:
        """Every record committed so far, in order."""
        records: list[bytes] = []
        position = self._consumer_pos[0]
        end = self._producer_pos[0]
        pages, words, mask, start = self._pages, self._words, self._mask, self._data_start
        while position < end:
            at = start + (position & mask)
            header = words[at >> 2]
            if header & _BUSY_BIT:  # still being written: the rest waits for the next call
                break
            length = header & _LENGTH_MASK
            if not header & _DISCARD_BIT:
                records.append(pages[at + _HEADER_BYTES:at + _HEADER_BYTES + length])
            position += (length + _HEADER_BYTES + 7) & ~7
        self._consumer_pos[0] = position
        return records

    def close(self) -> None:
        if self._epoll.closed:
            return
        self._epoll.close()
        self._consumer_pos.release()
        self._producer_pos.release()
        self._words.release()
        self._consumer_page.close()
        self._pages.close()


class RingBuffer:
    """Consumes a BPF ring buffer: each record, copied, in the list consume() returns."""

    def __init__(self, ring_map: Map) -> None:
        self._records: list[bytes] = []

        def copy_record(_ctx: int, data: int, size: int) -> int:
            # The memory goes back to the kernel when this returns: copy it now. The array
            # type's .raw copies at about half ctypes.string_at's cost (no foreign call;
            # ctypes caches the array types).
            self._records.append((ctypes.c_char * size).from_address(data).raw)
            return 0

        self._callback = RING_SAMPLE_FN(copy_record)  # kept alive with the ring
        self._ptr: Optional[int] = _check_ptr(
            lib().ring_buffer__new(ring_map.fd, self._callback, None, None),
            f"ring buffer on {ring_map.name}",
        )
        self._calls = _foreign()
        self._waiter = _Waiter(lib().ring_buffer__epoll_fd(self._ptr))

    def wait(self, timeout_ms: int) -> bool:
        """As MappedRing.wait."""
        return self._waiter.wait(timeout_ms)

    def consume(self) -> list[bytes]:
        """Every record committed so far, in order."""
        self._records = []
        rc = self._calls.consume(self._ptr)
        if rc != -errno.EINTR:
            _check_rc(rc, "consume ring buffer")
        return self._records

    def close(self) -> None:
        if self._ptr:
            lib().ring_buffer__free(self._ptr)
            self._ptr = None


def open_ring(ring_map: Map) -> Union[MappedRing, RingBuffer]:
    """The reader for this machine (MappedRing's docstring says why x86-64 only); libbpf's
    where the ring's pages cannot be mapped (libbpf then says why, if it cannot either)."""
    if platform.machine() == "x86_64":
        try:
            return MappedRing(ring_map)
        except OSError:
            pass
    return RingBuffer(ring_map)
