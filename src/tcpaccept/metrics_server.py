"""The Prometheus endpoint (--metrics): one thread, bounded sockets, nothing waits forever.

prometheus_client's own server gives each connection a thread and keeps it as long as the
client likes, with a listen backlog of 5; any path answers. Here instead:

- one selector thread serves every connection (an idle client costs an fd, never a thread
  or CPU): the thread sleeps in select() until a socket is ready or a deadline passes;
- at most ``max_connections`` sockets are open; a new client beyond that closes the oldest
  one (so idle or slow clients cannot lock the scraper out), and running out of fds
  (EMFILE) does the same, or pauses accepting for a moment, instead of spinning on accept();
- each connection has ``timeout_s`` in total to send its request, get the answer and go
  (one request per connection, ``Connection: close``);
- only ``/metrics`` (the registry), ``/healthz`` (the probes' cheap check: 200 ``ok`` while
  the main loop beats, else 503 and the reason) and ``/`` (a pointer) answer GET/HEAD; other
  paths get 404, other methods 405; a request head over 8 KiB is refused;
- TLS with a certificate and key through the standard ``ssl`` module (TLS 1.2+); the
  handshake runs inside the same non-blocking loop, so a client that stalls it is just
  another idle socket.

From prometheus-client (>= 0.16, as pinned) only ``exposition.choose_encoder`` is used: it
picks the text or OpenMetrics format from the Accept header, like its own server does.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import ipaddress
import selectors
import socket
import ssl
import threading
import time
from typing import Optional, TextIO

from prometheus_client.exposition import choose_encoder

from .errors import TcpacceptError

MAX_CONNECTIONS = 64
TIMEOUT_S = 10.0
LISTEN_BACKLOG = 128
MAX_REQUEST_HEAD = 8192
EMFILE_PAUSE_S = 0.5
_ERRNO_NO_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# /healthz turns 503 when the main loop (which beats once a second) has not beaten this long.
HEALTH_STALE_S = 5.0
LANDING_PAGE = (b"<html><head><title>tcpaccept</title></head><body>"
                b'<a href="/metrics">Metrics</a></body></html>\n')


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
        context.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise TcpacceptError(
            f"--metrics-tls-cert {certfile} --metrics-tls-key {keyfile}: cannot use them "
            f"as a TLS certificate and key ({reason})", exit_code=2) from None
    return context


class Heartbeat:
    """The main loop's pulse, for /healthz: the server exists only once the tracer is
    attached, so a recent beat means attached and alive."""

    def __init__(self, stale_s: float = HEALTH_STALE_S) -> None:
        self.stale_s = stale_s
        self._last: Optional[float] = None

    def beat(self) -> None:
        self._last = time.monotonic()

    def problem(self) -> Optional[str]:
        """None when healthy, else one line saying why not."""
        if self._last is None:
            return "main loop has not started"
        age = time.monotonic() - self._last
        return f"main loop stalled for {age:.0f} s" if age > self.stale_s else None


class _Connection:
    __slots__ = ("sock", "deadline", "request", "reply", "handshaking")

    def __init__(self, sock: socket.socket, deadline: float, handshaking: bool) -> None:
        self.sock = sock
        self.deadline = deadline
        self.request = bytearray()
        self.reply: Optional[memoryview] = None
        self.handshaking = handshaking


class MetricsServer:
    """Serves ``registry`` on address:port. Binds at construction (OSError propagates);
    ``with`` serves on a daemon thread and, on exit, stops it and closes every socket."""

    def __init__(self, address: str, port: int, registry: object,
                 certfile: Optional[str] = None, keyfile: Optional[str] = None, *,
                 max_connections: int = MAX_CONNECTIONS, timeout_s: float = TIMEOUT_S,
                 heartbeat: Optional[Heartbeat] = None) -> None:
        self.registry = registry
        self.heartbeat = heartbeat
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self._tls = tls_context(certfile, keyfile) if certfile and keyfile else None
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and ipaddress.ip_address(address).is_unspecified:
                self._listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self._listener.bind((address, port))
            self._listener.listen(LISTEN_BACKLOG)
            self._listener.setblocking(False)
        except OSError:
            self._listener.close()
            raise
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._connections: dict[socket.socket, _Connection] = {}  # oldest first
        self._paused_until = 0.0
        self._stopping = False
        self.errors = 0  # scrapes answered 500 because the registry raised
        self.last_error = ""
        self._thread = threading.Thread(target=self._serve, name="tcpaccept-metrics",
                                        daemon=True)

    # -- lifetime --

    def __enter__(self) -> MetricsServer:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and close every socket; idempotent."""
        self._stopping = True
        if self._thread.is_alive():
            self._wake_w.send(b"x")
            self._thread.join(5)
        for conn in list(self._connections.values()):
            self._drop(conn)
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def open_connections(self) -> int:
        return len(self._connections)

    # -- the loop --

    def _serve(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            if self._paused_until and now >= self._paused_until:
                self._paused_until = 0.0
                self._selector.register(self._listener, selectors.EVENT_READ)
            for key, mask in self._selector.select(self._next_timeout(now)):
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj is self._wake_r:
                    return
                else:
                    conn = self._connections.get(key.fileobj)  # type: ignore[call-overload]
                    if conn is not None:
                        self._service(conn, mask)
            self._expire(time.monotonic())

    def _next_timeout(self, now: float) -> Optional[float]:
        deadlines = [conn.deadline for conn in self._connections.values()]
        if self._paused_until:
            deadlines.append(self._paused_until)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._connections.values() if c.deadline <= now]:
            self._drop(conn)

    def _accept(self) -> None:
        for _ in range(self.max_connections):  # then let the others have a turn
            try:
                sock, _peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ERRNO_NO_FDS:
                    if self._connections:
                        self._drop_oldest()
                        continue
                    self._pause_accepting()
                return  # ECONNABORTED and the like: the client is gone
            if len(self._connections) >= self.max_connections:
                self._drop_oldest()
            self._adopt(sock)

    def _pause_accepting(self) -> None:
        """Out of fds with nothing to close: the listener stays readable, so stop polling
        it for a moment rather than spin on accept()."""
        self._selector.unregister(self._listener)
        self._paused_until = time.monotonic() + EMFILE_PAUSE_S

    def _adopt(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        handshaking = False
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_side=True,
                                             do_handshake_on_connect=False)
            except (ssl.SSLError, OSError):
                sock.close()
                return
            handshaking = True
        conn = _Connection(sock, time.monotonic() + self.timeout_s, handshaking)
        self._connections[sock] = conn
        self._selector.register(sock, selectors.EVENT_READ)

    def _drop_oldest(self) -> None:
        """Make room: the oldest client still to send its request (an answer under way is
        let go only when every connection is answering)."""
        conns = self._connections.values()
        self._drop(next((c for c in conns if c.reply is None), next(iter(conns))))

    def _drop(self, conn: _Connection) -> None:
        self._connections.pop(conn.sock, None)
        with contextlib.suppress(KeyError, ValueError):  # the selector may be closed
            self._selector.unregister(conn.sock)
        conn.sock.close()

    def _wait_for(self, conn: _Connection, events: int) -> None:
        self._selector.modify(conn.sock, events)

    def _service(self, conn: _Connection, mask: int) -> None:
        try:
            if conn.handshaking:
                conn.sock.do_handshake()  # type: ignore[attr-defined]
                conn.handshaking = False
                self._wait_for(conn, selectors.EVENT_READ)
            if conn.reply is None:
                self._read(conn)
            if conn.reply is not None:
                self._send(conn)
        except ssl.SSLWantReadError:
            self._wait_for(conn, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self._wait_for(conn, selectors.EVENT_WRITE)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset, TLS alert, bad certificate: this client only
            self._drop(conn)

    def _read(self, conn: _Connection) -> None:
        while True:
            data = conn.sock.recv(4096)
            if not data:
                self._drop(conn)
                return
            conn.request += data
            if b"\r\n\r\n" in conn.request:
                conn.reply = memoryview(self._safe_answer(bytes(conn.request)))
                self._wait_for(conn, selectors.EVENT_WRITE)
                return
            if len(conn.request) > MAX_REQUEST_HEAD:
                conn.reply = memoryview(_response(431, "Request Header Fields Too Large"))
                self._wait_for(conn, selectors.EVENT_WRITE)
                return
            # TLS may hold decrypted bytes the socket no longer signals: read them now.
            if not getattr(conn.sock, "pending", lambda: 0)():
                return

    def _send(self, conn: _Connection) -> None:
        reply = conn.reply
        assert reply is not None
        while reply:
            sent = conn.sock.send(reply)
            reply = conn.reply = reply[sent:]
        self._drop(conn)  # Connection: close

    def _safe_answer(self, request: bytes) -> bytes:
        """A collector that raises (say, a label the exposition cannot encode) costs that
        scrape a 500, never the server thread."""
        try:
            return self._answer(request)
        except Exception as exc:  # noqa: BLE001 - whatever a collector raises
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return _response(500, "Internal Server Error",
                             f"500 {type(exc).__name__}\n".encode())

    def _answer(self, request: bytes) -> bytes:
        head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(400, "Bad Request")
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if path not in ("/", "/metrics", "/healthz"):
            return _response(404, "Not Found")
        if method not in ("GET", "HEAD"):
            return _response(405, "Method Not Allowed", extra="Allow: GET, HEAD\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if path == "/healthz":
            problem = self.heartbeat.problem() if self.heartbeat is not None else None
            if problem is not None:
                return _response(503, "Service Unavailable", f"{problem}\n".encode(),
                                 head_only=method == "HEAD")
            return _response(200, "OK", b"ok\n", head_only=method == "HEAD")
        if path == "/":
            body, content_type, encoding = LANDING_PAGE, "text/html; charset=utf-8", ""
        else:
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            body = encoder(self.registry)  # type: ignore[arg-type]
            encoding = ""
            if "gzip" in headers.get("accept-encoding", ""):
                body, encoding = gzip.compress(body, compresslevel=1), "Content-Encoding: gzip\r\n"
        return _response(200, "OK", body, content_type, extra=encoding,
                         head_only=method == "HEAD")


def _response(status: int, reason: str, body: Optional[bytes] = None,
              content_type: str = "text/plain; charset=utf-8", extra: str = "",
              head_only: bool = False) -> bytes:
    if body is None:
        body = f"{status} {reason}\n".encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("latin-1") + (b"" if head_only else body)
