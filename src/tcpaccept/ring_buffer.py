"""RingBuffer: consumes the tracer's BPF ring buffer through libbpf's ring_buffer API."""

from __future__ import annotations

import errno
from typing import Callable, Optional

from .libbpf import RING_SAMPLE_FN, Map, _check_ptr, _check_rc, lib


class RingBuffer:
    """Consumes a BPF ring buffer; each sample is handed to on_sample(address, size).

    The callback runs inside ring_buffer__poll: it must copy what it needs at once, the
    memory is returned to the kernel when it returns.
    """

    def __init__(self, ring_map: Map, on_sample: Callable[[int, int], None]) -> None:
        def trampoline(_ctx: int, data: int, size: int) -> int:
            on_sample(data, size)
            return 0

        self._callback = RING_SAMPLE_FN(trampoline)  # kept alive with the ring
        self._ptr: Optional[int] = _check_ptr(
            lib().ring_buffer__new(ring_map.fd, self._callback, None, None),
            f"ring buffer on {ring_map.name}",
        )

    def poll(self, timeout_ms: int) -> int:
        """Samples consumed; 0 on timeout or when a signal interrupted the wait."""
        rc = lib().ring_buffer__poll(self._ptr, timeout_ms)
        if rc == -errno.EINTR:
            return 0
        return _check_rc(rc, "poll ring buffer")

    def consume(self) -> int:
        rc = lib().ring_buffer__consume(self._ptr)
        return 0 if rc == -errno.EINTR else _check_rc(rc, "consume ring buffer")

    def close(self) -> None:
        if self._ptr:
            lib().ring_buffer__free(self._ptr)
            self._ptr = None
