"""The pieces around the metrics endpoint's loop: the listening socket, the request head,
the response head, TLS, a hang-up check, the exposure warning. The serving loop itself is
metrics_server.py."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Optional, TextIO

from .errors import TcpacceptError
from .tls_keys import load_cert_chain_without_prompt

MAX_REQUEST_HEAD = 8192
LISTEN_BACKLOG = 128
M_MMAP_THRESHOLD = -3  # mallopt(3)
BODY_MMAP_BYTES = 1 << 20


def return_big_buffers_to_the_kernel() -> None:
    """Bodies (~10 MB with 4,096 listeners) come and go with each state: with glibc's
    dynamic threshold they end up on the heap and its pages stay resident after they are
    freed; a fixed mmap threshold gives every buffer over 1 MiB back at free()."""
    with contextlib.suppress(AttributeError, OSError):  # not glibc: nothing to tune
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, BODY_MMAP_BYTES)
LANDING_PAGE = (b"<html><head><title>tcpaccept</title></head><body>"
                b'<a href="/metrics">Metrics</a></body></html>\n')
PATHS = ("/", "/metrics", "/healthz")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]

    @property
    def head_only(self) -> bool:
        return self.method == "HEAD"

    @property
    def gzip(self) -> bool:
        return "gzip" in self.headers.get("accept-encoding", "")


def parse_request(raw: bytes) -> Request | bytes:
    """The request, or the whole answer when it cannot be served (400, 404, 405)."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return response(400, "Bad Request")
    method, target = parts[0], parts[1]
    path = target.split("?", 1)[0]
    if path not in PATHS:
        return response(404, "Not Found")
    if method not in ("GET", "HEAD"):
        return response(405, "Method Not Allowed", extra="Allow: GET, HEAD\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Request(method, path, headers)


def response_head(status: int, reason: str, length: int,
                  content_type: str = "text/plain; charset=utf-8", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n{extra}Connection: close\r\n\r\n"
            ).encode("latin-1")


def exposure_warning(address: str, port: int) -> Optional[str]:
    """The one warning line for a wildcard bind (0.0.0.0, ::), else None."""
    if not ipaddress.ip_address(address).is_unspecified:
        return None
    return (f"warning: --metrics {_host_port(address, port)} listens on every address: "
            f"anyone who can reach port {port} reads the process names, listener addresses "
            f"and ports of this host; bind a specific address or firewall the port")


def warn_if_exposed(address: str, port: int, err: TextIO) -> None:
    """Print exposure_warning on err (the CLI calls this before it starts the server)."""
    line = exposure_warning(address, port)
    if line is not None:
        err.write(f"tcpaccept: {line}\n")
        err.flush()


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server context for the certificate and key; a bad pair is one TcpacceptError."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        load_cert_chain_without_prompt(context, certfile, keyfile)  # never a prompt
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise TcpacceptError(
            f"--metrics-tls-cert {certfile} --metrics-tls-key {keyfile}: cannot use them "
            f"as a TLS certificate and key ({reason})", exit_code=2) from None
    return context


def response(status: int, reason: str, body: Optional[bytes] = None,
             content_type: str = "text/plain; charset=utf-8", extra: str = "",
             head_only: bool = False) -> bytes:
    """A whole small answer (errors, the landing page, /healthz)."""
    if body is None:
        body = f"{status} {reason}\n".encode()
    head = response_head(status, reason, len(body), content_type, extra)
    return head + (b"" if head_only else body)


def listen_socket(address: str, port: int) -> socket.socket:
    """A non-blocking listener; [::] serves IPv4 too (IPV6_V6ONLY off)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind((address, port))
        listener.listen(LISTEN_BACKLOG)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


def hung_up(sock: socket.socket) -> bool:
    """The client closed its side (CLOSE-WAIT here) or reset. TLS sockets cannot peek;
    their hang-up shows as a read of nothing in _read instead."""
    if isinstance(sock, ssl.SSLSocket):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
