"""RingBuffer: consumes the tracer's BPF ring buffer through libbpf's ring_buffer API."""

from __future__ import annotations

import ctypes
import errno
from typing import Optional

from .libbpf import LIBBPF_SONAME, RING_SAMPLE_FN, Map, _check_ptr, _check_rc, lib

# One struct epoll_event: 12 bytes on x86-64 (packed), 16 elsewhere.
_EPOLL_EVENT_BYTES = 16


class _Calls:
    """The three foreign calls of the event loop, typed once.

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


_calls: Optional[_Calls] = None


def _foreign() -> _Calls:
    global _calls
    if _calls is None:
        _calls = _Calls()
    return _calls


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
        self._epoll_fd = lib().ring_buffer__epoll_fd(self._ptr)
        self._event = ctypes.create_string_buffer(_EPOLL_EVENT_BYTES)

    def wait(self, timeout_ms: int) -> bool:
        """Until the kernel wakes the reader or timeout_ms passes; False on timeout or when
        a signal interrupted the wait (the caller then looks at its stop flag)."""
        ready = self._calls.epoll_wait(self._epoll_fd, self._event, 1, timeout_ms)
        if ready < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                return False
            _check_rc(-err, "wait for the ring buffer")
        return ready > 0

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
