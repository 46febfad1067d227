"""One NETLINK_SOCK_DIAG socket and the listener dump over it.

A netlink socket answers for the network namespace it was created in, whatever namespace
the process moves to later; namespaces.py uses that to keep one socket per namespace.
"""

from __future__ import annotations

import socket

from .abi import NETLINK_SOCK_DIAG, DropMonitorError, ListenerSample, decode_messages, frame

_RECV_BUF = 32768  # the kernel caps one dump skb at 32 KiB anyway
_DUMP_TIMEOUT_S = 5.0  # a dump of thousands of listeners takes milliseconds


class DiagSocket:
    """A sock_diag socket of one namespace; closed on any failure (a dump abandoned halfway
    leaves the socket busy: EBUSY for the next request), so the owner reopens it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock
        self._buf = bytearray(_RECV_BUF)
        self._seq = 0

    @classmethod
    def open(cls) -> DiagSocket:
        """A socket in the calling thread's network namespace."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        except OSError as exc:
            raise DropMonitorError(f"cannot open sock_diag socket: {reason(exc)}") from None
        try:
            sock.bind((0, 0))
            sock.settimeout(_DUMP_TIMEOUT_S)
        except OSError as exc:
            sock.close()
            raise DropMonitorError(f"cannot bind sock_diag socket: {reason(exc)}") from None
        return cls(sock)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def dump(self, body: bytes) -> list[ListenerSample]:
        """Run one dump request (a body from abi.request_body) to its end."""
        if self._sock is None:
            raise DropMonitorError("sock_diag socket is closed")
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        try:
            return self._run(self._sock, frame(body, self._seq), self._seq)
        except (OSError, DropMonitorError):
            self.close()
            raise

    def _run(self, sock: socket.socket, request: bytes, seq: int) -> list[ListenerSample]:
        try:
            sock.send(request)
        except OSError as exc:
            raise DropMonitorError(f"sock_diag request failed: {reason(exc)}") from None
        samples: list[ListenerSample] = []
        view = memoryview(self._buf)
        while True:
            try:
                n = sock.recv_into(self._buf)
            except OSError as exc:
                raise DropMonitorError(f"sock_diag receive failed: {reason(exc)}") from None
            if n == 0:
                raise DropMonitorError("sock_diag dump ended without NLMSG_DONE")
            batch, done = decode_messages(view[:n], seq)
            samples.extend(batch)
            if done:
                return samples


def reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__  # socket.timeout has no strerror
