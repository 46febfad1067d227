"""The Prometheus endpoint (--metrics): one thread, bounded sockets, no client can stall it.

prometheus_client's own server gives each connection a thread, renders the whole body for
every request and keeps a connection as long as the client likes. Here instead:

- one selector thread serves every connection (an idle client costs an fd, never a thread
  or CPU); every write is non-blocking, so a client that never reads its answer only
  holds its own socket until its deadline;
- the body is rendered at most once per published state (and gzipped once, when asked)
  and every client is sent the same bytes object: N clients cost N socket buffers in the
  kernel, not N bodies here;
- a /metrics request asks the main loop for a fresh state and waits for it (at most
  FRESH_WAIT_S, then it gets the latest one): the loop's tick reads the kernel maps, this
  thread never does; clients that went away while waiting are dropped before any work;
- /healthz is cheap (never renders): 200 ``ok`` while the main loop ticks, else 503 and why;
- at most ``max_connections`` sockets are open; a new client beyond that closes the oldest
  one still to send its request, and running out of fds (EMFILE) does the same, or pauses
  accepting for a moment, instead of spinning on accept();
- each connection has ``timeout_s`` in total to send its request, get the answer and go
  (one request per connection, ``Connection: close``); a head over 8 KiB is refused;
- TLS through the standard ``ssl`` module (TLS 1.2+), its handshake inside the same loop.

From prometheus-client only ``exposition.choose_encoder`` is used: it picks the text or
OpenMetrics format from the Accept header, like its own server does.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import selectors
import socket
import ssl
import threading
import time
from typing import Any, Callable, Optional, Protocol

from prometheus_client.exposition import choose_encoder

from .exposition import Cancelled
from .metrics_http import (  # noqa: F401 - exposure_warning, warn_if_exposed: public here
    LANDING_PAGE,
    MAX_REQUEST_HEAD,
    Request,
    exposure_warning,
    hung_up,
    listen_socket,
    parse_request,
    response,
    response_head,
    return_big_buffers_to_the_kernel,
    tls_context,
    warn_if_exposed,
)

MAX_CONNECTIONS = 64
TIMEOUT_S = 10.0
EMFILE_PAUSE_S = 0.5
MAX_PINNED_BYTES = 24 << 20  # bodies still being sent, all together: ~2.5 of 4,096 listeners
FRESH_WAIT_S = 1.0  # a scrape waits this long for the main loop's next state at most
OPENMETRICS = "application/openmetrics-text"
_ERRNO_NO_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class StateSource(Protocol):
    """What the server needs of metrics.MetricsSink (all safe from this thread)."""

    on_publish: list[Callable[[], None]]

    @property
    def state(self) -> Any: ...  # a PublishedState, immutable
    def request_fresh(self) -> int: ...
    def health(self) -> Optional[str]: ...
    def exposition(self, openmetrics: bool, state: Any,
                   cancelled: Callable[[], bool]) -> bytes: ...


class _Connection:
    __slots__ = ("sock", "deadline", "request", "reply", "handshaking", "waiting", "body")

    def __init__(self, sock: socket.socket, deadline: float, handshaking: bool) -> None:
        self.sock = sock
        self.deadline = deadline
        self.request = bytearray()
        self.reply: Optional[list[memoryview]] = None  # head, body: views, never copies
        self.handshaking = handshaking
        # (parsed request, generation wanted, serve the latest after) while it waits
        self.waiting: Optional[tuple[Request, int, float]] = None
        self.body: Optional[bytes | bytearray] = None  # the shared body it is being sent


class MetricsServer:
    """Serves ``registry`` (or ``source``'s published state) on address:port. Binds at
    construction (OSError propagates); ``with`` serves on a daemon thread and, on exit,
    stops it and closes every socket."""

    def __init__(self, address: str, port: int, registry: object,
                 certfile: Optional[str] = None, keyfile: Optional[str] = None, *,
                 max_connections: int = MAX_CONNECTIONS, timeout_s: float = TIMEOUT_S,
                 source: Optional[StateSource] = None) -> None:
        self.registry = registry
        self.source = source
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self._tls = tls_context(certfile, keyfile) if certfile and keyfile else None
        self._listener = listen_socket(address, port)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._connections: dict[socket.socket, _Connection] = {}  # oldest first
        self._paused_until = 0.0
        self._stopping = False
        self._bodies: dict[tuple[str, bool], tuple[str, bytes]] = {}
        self._bodies_generation = -1
        self.renders = 0  # bodies rendered (a test counts them)
        self.errors = 0  # scrapes answered 500 because the registry raised
        self.last_error = ""
        self._thread = threading.Thread(target=self._serve, name="tcpaccept-metrics",
                                        daemon=True)

    # -- lifetime --

    def __enter__(self) -> MetricsServer:
        return_big_buffers_to_the_kernel()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        if self.source is not None:
            self.source.on_publish.append(self.wake)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and close every socket; idempotent."""
        self._stopping = True
        if self.source is not None and self.wake in self.source.on_publish:
            self.source.on_publish.remove(self.wake)
        if self._thread.is_alive():
            self.wake()
            self._thread.join(5)
        for conn in list(self._connections.values()):
            self._drop(conn)
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def wake(self) -> None:
        """From any thread: a new state is published (or we stop)."""
        with contextlib.suppress(OSError):  # full (a wake is pending anyway) or closed
            self._wake_w.send(b"x")

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
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                    if self._stopping:
                        return
                else:
                    conn = self._connections.get(key.fileobj)  # type: ignore[call-overload]
                    if conn is not None:
                        self._service(conn, mask)
            now = time.monotonic()
            self._answer_waiting(now)
            self._expire(now)

    def _next_timeout(self, now: float) -> Optional[float]:
        deadlines = [conn.deadline for conn in self._connections.values()]
        deadlines += [c.waiting[2] for c in self._connections.values() if c.waiting]
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
        self._drop(next((c for c in conns if c.reply is None and c.waiting is None),
                        next(iter(conns))))

    def _drop(self, conn: _Connection) -> None:
        self._connections.pop(conn.sock, None)
        with contextlib.suppress(KeyError, ValueError):  # the selector may be closed
            self._selector.unregister(conn.sock)
        conn.sock.close()

    def _service(self, conn: _Connection, mask: int) -> None:
        try:
            if conn.handshaking:
                conn.sock.do_handshake()  # type: ignore[attr-defined]
                conn.handshaking = False
                self._selector.modify(conn.sock, selectors.EVENT_READ)
            if conn.reply is None:
                self._read(conn)
            if conn.reply is not None:
                self._send(conn)
        except ssl.SSLWantReadError:
            self._selector.modify(conn.sock, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset, TLS alert, bad certificate: this client only
            self._drop(conn)

    def _read(self, conn: _Connection) -> None:
        while True:
            data = conn.sock.recv(4096)
            if not data:  # gone (also while it waits for a fresh state)
                self._drop(conn)
                return
            if conn.waiting is not None:  # bytes after the head: not ours to serve
                continue
            conn.request += data
            if b"\r\n\r\n" in conn.request:
                self._route(conn, parse_request(bytes(conn.request)))
                return
            if len(conn.request) > MAX_REQUEST_HEAD:
                self._reply(conn, response(431, "Request Header Fields Too Large"))
                return
            # TLS may hold decrypted bytes the socket no longer signals: read them now.
            if not getattr(conn.sock, "pending", lambda: 0)():
                return

    def _route(self, conn: _Connection, request: Request | bytes) -> None:
        if isinstance(request, bytes):
            self._reply(conn, request)
        elif request.path == "/":
            self._reply(conn, response(200, "OK", LANDING_PAGE, "text/html; charset=utf-8",
                                       head_only=request.head_only))
        elif request.path == "/healthz":
            reason = self.source.health() if self.source is not None else None
            body = b"ok\n" if reason is None else f"{reason}\n".encode()
            self._reply(conn, response(200 if reason is None else 503,
                                       "OK" if reason is None else "Service Unavailable",
                                       body, head_only=request.head_only))
        elif self.source is None:
            self._reply_metrics(conn, request)
        else:  # wait for the main loop's next state; the selector reports a hang-up
            wanted = self.source.request_fresh()
            conn.waiting = (request, wanted, time.monotonic() + FRESH_WAIT_S)

    def _answer_waiting(self, now: float) -> None:
        generation = self.source.state.generation if self.source is not None else 0
        for conn in [c for c in self._connections.values() if c.waiting]:
            request, wanted, latest_after = conn.waiting  # type: ignore[misc]
            if generation < wanted and now < latest_after:
                continue
            if hung_up(conn.sock):  # left while it waited: no work for it
                self._drop(conn)
                continue
            conn.waiting = None
            self._reply_metrics(conn, request)
            if conn.sock in self._connections:
                self._service(conn, selectors.EVENT_WRITE)

    def _reply(self, conn: _Connection, whole: bytes) -> None:
        conn.reply = [memoryview(whole)]
        self._selector.modify(conn.sock, selectors.EVENT_WRITE)

    def _reply_metrics(self, conn: _Connection, request: Request) -> None:
        try:
            content_type, body = self._body(request)
        except Cancelled:  # stopping: no answer
            self._drop(conn)
            return
        except Exception as exc:  # noqa: BLE001 - whatever a collector raises
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._reply(conn, response(500, "Internal Server Error",
                                       f"500 {type(exc).__name__}\n".encode()))
            return
        extra = "Content-Encoding: gzip\r\n" if request.gzip else ""
        head = response_head(200, "OK", len(body), content_type, extra)
        conn.reply = [memoryview(head)] + ([] if request.head_only else [memoryview(body)])
        conn.body = None if request.head_only else body
        self._selector.modify(conn.sock, selectors.EVENT_WRITE)
        self._bound_pinned_bodies()

    def _bound_pinned_bodies(self) -> None:
        """A client still being sent an older body keeps it alive. Past MAX_PINNED_BYTES of
        distinct bodies, the clients of the oldest non-current ones go: memory is bounded
        by design, whatever the clients do (a scraper that reads takes a body in well
        under a second; one that does not read loses nothing it would have read)."""
        current = {id(body) for _, body in self._bodies.values()}
        pinned: dict[int, tuple[int, list[_Connection]]] = {}
        for conn in self._connections.values():  # oldest first
            if conn.body is not None:
                pinned.setdefault(id(conn.body), (len(conn.body), []))[1].append(conn)
        total = sum(size for size, _ in pinned.values())
        for key, (size, holders) in pinned.items():
            if total <= MAX_PINNED_BYTES:
                return
            if key not in current:
                for conn in holders:
                    self._drop(conn)
                total -= size

    def _body(self, request: Request) -> tuple[str, bytes]:
        """(content type, body): rendered once per published state, format and encoding;
        every client of that state gets the same bytes object."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        source = self.source
        if source is None:  # a plain registry (tests): it may change at any time
            self._bodies.clear()
            state = None
        else:
            state = source.state
            if state.generation != self._bodies_generation:
                self._bodies.clear()
                self._bodies_generation = state.generation
        key = (content_type, request.gzip)
        cached = self._bodies.get(key)
        if cached is None:
            plain = self._bodies.get((content_type, False))
            if plain is None:
                self.renders += 1
                if source is None:
                    body = encoder(self.registry)  # type: ignore[arg-type]
                else:
                    body = source.exposition(content_type.startswith(OPENMETRICS), state,
                                             lambda: self._stopping)
                plain = self._bodies[(content_type, False)] = (content_type, body)
            cached = plain
            if request.gzip:
                cached = (content_type, gzip.compress(plain[1], compresslevel=1))
                self._bodies[key] = cached
        return cached

    def _send(self, conn: _Connection) -> None:
        reply = conn.reply
        assert reply is not None
        while reply:
            sent = conn.sock.send(reply[0])
            reply[0] = reply[0][sent:]
            if not reply[0]:
                reply.pop(0)
        self._drop(conn)  # Connection: close
