"""A small HTTP/1.1 server on asyncio.Protocol: the hot routes here, the rest to tornado.

Why: measured on a leader under 64 writing clients, tornado's per-request path
(an IOStream coroutine per message, HTTPHeaders, a RequestHandler per request,
flush and finish) took three quarters of the process's CPU, and bounded the
whole cluster's throughput. The key routes are hot, simple and small, so they
are parsed here from the raw bytes and answered with a single write.

Every other route (membership, peers, admin, status) goes on to the tornado
Application unchanged: `_TornadoExchange` plays the part of tornado's
HTTP1Connection for one request, so tornado's handlers, routing and error
pages work as before, streamed request bodies included.

Supported: keep-alive and pipelining (one request at a time, answered in
order), Content-Length and chunked request bodies, `Expect: 100-continue`.
Bad framing gets a JSON 4xx and the connection is closed. A connection that
sends nothing for `idle_timeout` while no answer is pending is closed (tornado's
default of an hour), so clients that vanish without a FIN do not hold sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from tornado import httputil
from tornado.web import Application

from .operations import error_body

log = logging.getLogger(__name__)

MAX_HEAD = 1 << 20  # so an over-long key still reaches the route and gets a JSON 414
MAX_CHUNK_LINE = 1024
_PAUSE_AT = 4 << 20  # bytes buffered while a request is being answered
_CHUNK_SIZE, _CHUNK_CRLF, _CHUNK_TRAILER = -1, -2, -3  # chunked-decoder states
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


@dataclass(slots=True)
class Request:
    method: str
    target: str  # as sent: path and query, still percent-encoded
    path: str
    query: str
    version: str
    headers: dict[str, str]  # lower-case names; repeats joined with ", "
    raw_headers: list[tuple[str, str]]
    body: bytes = b""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], "Response | Awaitable[Response]"]


@dataclass(slots=True)
class FastRoute:
    """A route answered here. `too_large(size)` answers a body over `max_body`,
    which is read and discarded if it is at most `drain` bytes (else the
    connection is closed after the answer)."""

    handler: Handler
    max_body: int
    drain: int
    too_large: Callable[[int], Response]


Router = Callable[[str, str], FastRoute | None]  # (method, path) -> route, or None for tornado


class HttpServer:
    """Serves `router`'s routes itself and hands everything else to `app`."""

    def __init__(
        self, router: Router, app: Application, *, max_body: int, idle_timeout: float = 3600.0
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        self.router, self.app, self.max_body = router, app, max_body
        self.idle_timeout = idle_timeout
        self.connections: set[HttpProtocol] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._sweep: asyncio.TimerHandle | None = None

    async def listen(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            sock.setblocking(False)
            server = await loop.create_server(lambda: HttpProtocol(self), sock=sock)
            self._servers.append(server)
        if self._sweep is None:
            self._schedule_sweep()

    def stop(self) -> None:
        """Close the listeners and every connection; answers in progress are dropped."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.close()
            conn.cancel_answer()

    def _schedule_sweep(self) -> None:
        # One timer per server, not per request: a connection's idleness is
        # only a timestamp, checked a few times per timeout.
        every = min(60.0, self.idle_timeout / 4)
        self._sweep = asyncio.get_running_loop().call_later(every, self._close_idle)

    def _close_idle(self) -> None:
        cutoff = time.monotonic() - self.idle_timeout
        for conn in list(self.connections):
            if conn.idle_since(cutoff):
                conn.close()
        self._schedule_sweep()


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse a request, answer it, then the next."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False  # a whole request was read; its answer is not written yet
        self._paused = False
        self._closed = False
        self._parsing = False
        self._task: asyncio.Future[None] | None = None  # the answer being awaited
        self._request: Request | None = None
        self._route: FastRoute | None = None
        self._exchange: _TornadoExchange | None = None
        self._keep_alive = True
        self._http10 = False
        self._last_active = time.monotonic()
        # body framing of the request being read
        self._reading_body = False
        self._body_left = 0  # Content-Length bytes still to come
        self._chunked = False
        self._chunk_state = _CHUNK_SIZE
        self._body_parts: list[bytes] = []
        self._body_size = 0
        self._body_limit = 0

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        if self._exchange is not None:
            self._exchange.connection_lost()
            self._exchange = None

    def data_received(self, data: bytes) -> None:
        self._last_active = time.monotonic()
        self._buf += data
        if self._reading_body:
            self._read_body()
        elif not self._busy:
            self._next_request()
        if self._busy and len(self._buf) > _PAUSE_AT and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()

    def cancel_answer(self) -> None:
        """Stop awaiting a fast handler (the server is stopping: nobody gets the answer)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def idle_since(self, cutoff: float) -> bool:
        """Whether nothing came in since `cutoff` and nothing is being answered or
        streamed (a peer's long-lived request body is not idleness)."""
        return self._last_active < cutoff and not self._busy and self._exchange is None

    # ------------------------------------------------------------ reading

    def _next_request(self) -> None:
        if self._parsing:
            return  # an answer written from inside the loop below: it goes on by itself
        self._parsing = True
        try:
            while not self._busy and not self._closed and not self._reading_body:
                if not self._read_head():
                    return
                self._read_body()
        finally:
            self._parsing = False

    def _read_head(self) -> bool:
        buf = self._buf
        while buf[:2] == b"\r\n":
            del buf[:2]  # empty lines before a request are allowed (RFC 9112, 2.2)
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._refuse(431, "request_header_too_large", "the request head is over 1 MiB")
            return False
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        lines = head.split("\r\n")
        request_line = lines[0]
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._refuse(400, "bad_request", f"malformed request line {request_line[:100]!r}")
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        raw_headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                self._refuse(400, "bad_request", f"malformed header line {line[:100]!r}")
                return False
            value = value.strip()
            raw_headers.append((name, value))
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        path, _, query = target.partition("?")
        request = Request(method, target, path, query, version, headers, raw_headers)
        connection = headers.get("connection", "").lower()
        self._http10 = version == "HTTP/1.0"
        if self._http10:
            self._keep_alive = "keep-alive" in connection
        else:
            self._keep_alive = "close" not in connection
        return self._start(request)

    def _start(self, request: Request) -> bool:
        """Decide how the body is framed and who answers; False if refused."""
        headers = request.headers
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is not None:
            if cl is not None or te.lower() != "chunked":
                self._refuse(400, "bad_request", "unsupported Transfer-Encoding framing")
                return False
            self._chunked, self._chunk_state, self._body_left = True, _CHUNK_SIZE, 0
        elif cl is not None:
            if not (cl.isascii() and cl.isdigit()) or len(cl) > 18:
                self._refuse(400, "bad_request", f"bad Content-Length {cl[:40]!r}")
                return False
            self._chunked, self._body_left = False, int(cl)
        else:
            self._chunked, self._body_left = False, 0
        self._request = request
        self._body_parts, self._body_size = [], 0
        route = self.server.router(request.method, request.path)
        self._route = route
        if route is not None:
            self._body_limit = route.max_body
            if not self._chunked and self._body_left > route.drain:
                self._keep_alive = False
                self._answer(route.too_large(self._body_left))
                return False
        else:
            self._body_limit = self.server.max_body
            self._exchange = _TornadoExchange(self, request)
        if (self._chunked or self._body_left) and headers.get("expect", "").lower() == (
            "100-continue"
        ):
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._reading_body = True
        if self._exchange is not None:
            self._exchange.start()
        return not self._closed

    def _read_body(self) -> None:
        """Take what the buffer holds of the current body; finish the request
        when the body is complete."""
        if not self._reading_body or self._closed:
            return
        if self._chunked:
            done = self._read_chunked()
        else:
            take = min(self._body_left, len(self._buf))
            if take:
                self._body_chunk(bytes(self._buf[:take]))
                del self._buf[:take]
                self._body_left -= take
            done = self._body_left == 0
        if done and self._reading_body and not self._closed:
            self._reading_body = False
            self._request_complete()

    def _read_chunked(self) -> bool:
        buf = self._buf
        while not self._closed:
            state = self._chunk_state
            if state > 0:
                take = min(state, len(buf))
                if not take:
                    return False
                self._body_chunk(bytes(buf[:take]))
                del buf[:take]
                self._chunk_state = state - take or _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if len(buf) < 2:
                    return False
                if buf[:2] != b"\r\n":
                    self._refuse(400, "bad_request", "a chunk does not end in CRLF")
                    return False
                del buf[:2]
                self._chunk_state = _CHUNK_SIZE
            else:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        self._refuse(400, "bad_request", "a chunk-size line is too long")
                    return False
                line = bytes(buf[:end])
                del buf[: end + 2]
                if state == _CHUNK_TRAILER:
                    if not line:
                        return True
                    continue  # trailer fields are ignored
                size_text = line.split(b";", 1)[0].strip()
                if not _HEX.fullmatch(size_text):  # int(x, 16) would also take "0x1f", "1_0"
                    self._refuse(400, "bad_request", f"bad chunk size {size_text[:20]!r}")
                    return False
                size = int(size_text, 16)
                self._chunk_state = size if size else _CHUNK_TRAILER
        return False

    def _body_chunk(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._exchange is not None:
            self._exchange.feed(chunk)  # the exchange checks the size: prepare may raise it
            return
        if self._body_size <= self._body_limit:
            self._body_parts.append(chunk)
            return
        self._body_parts.clear()
        route = self._route
        assert route is not None
        if self._body_size > route.drain:  # chunked and far too large: stop reading it
            self._keep_alive = False
            self._reading_body = False
            self._answer(route.too_large(self._body_size))

    def _request_complete(self) -> None:
        self._busy = True
        if self._exchange is not None:
            self._exchange.feed(None)
            return
        request, route = self._request, self._route
        assert request is not None and route is not None
        if self._body_size > route.max_body:
            self._answer(route.too_large(self._body_size))
            return
        request.body = (
            b"".join(self._body_parts) if len(self._body_parts) != 1 else (self._body_parts[0])
        )
        self._body_parts = []
        try:
            outcome = route.handler(request)
        except Exception:
            log.exception("internal error in %s %s", request.method, request.path)
            self._answer_error(500, "internal_server_error", _INTERNAL)
            return
        if isinstance(outcome, Response):
            self._answer(outcome)
        else:
            self._task = asyncio.ensure_future(self._await_answer(request, outcome))

    async def _await_answer(self, request: Request, outcome: Awaitable[Response]) -> None:
        try:
            response = await outcome
        except Exception:
            log.exception("internal error in %s %s", request.method, request.path)
            response = Response(500, error_body("internal_server_error", _INTERNAL))
        self._task = None
        self._answer(response)

    # ------------------------------------------------------------ writing

    def _answer(self, response: Response) -> None:
        status = response.status
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(response.body)}\r\n"
        ]
        for name, value in response.headers:
            head.append(f"{name}: {value}\r\n")
        if not self._keep_alive:
            head.append("Connection: close\r\n")
        elif self._http10:
            head.append("Connection: keep-alive\r\n")
        head.append("\r\n")
        self._write_and_continue("".join(head).encode("latin-1") + response.body)

    def _answer_error(self, status: int, code: str, message: str) -> None:
        self._answer(Response(status, error_body(code, message)))

    def _bridged_body_too_large(self, limit: int) -> None:
        self._keep_alive = False
        self._reading_body = False
        if self._exchange is not None:
            self._exchange.abandon()
            self._exchange = None
        self._answer_error(413, "payload_too_large", f"the request body is over {limit} bytes")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer a request we cannot frame, and close: what follows is unreadable."""
        self._keep_alive = False
        self._reading_body = False
        if self._exchange is not None:
            self._exchange.abandon()
            self._exchange = None
        self._answer_error(status, code, message)

    def _write_and_continue(self, data: bytes) -> None:
        """Send an answer, then read the next request (or close)."""
        if self._closed or self.transport is None:
            return
        self.transport.write(data)
        self._finish_response()

    def _finish_response(self) -> None:
        self._busy = False
        self._last_active = time.monotonic()
        self._request = None
        self._route = None
        self._exchange = None
        if not self._keep_alive or self._reading_body:
            # Closing mid-body: the rest of the request cannot be told from the next one.
            self.close()
            return
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        if self._buf:
            self._next_request()


_INTERNAL = "internal error; the node keeps serving (please report this as a bug)"


class _TornadoExchange(httputil.HTTPConnection):
    """One request handed to tornado's Application, as its HTTP1Connection would."""

    def __init__(self, protocol: HttpProtocol, request: Request) -> None:
        self.protocol = protocol
        self.request = request
        self.max_body = protocol.server.max_body
        self.context = _Context(protocol)
        self._delegate = protocol.server.app.start_request(None, self)
        self._pending: deque[bytes | None] = deque()  # body chunks; None marks the end
        self._pumping = False  # a task is handing chunks over, in order
        self._body_done = False
        self._received = 0
        self._pending_bytes = 0
        self._paused = False
        self._pump_task: asyncio.Future[None] | None = None
        self._close_callback: Callable[[], None] | None = None
        self._chunked_response = False
        self._head_only = request.method == "HEAD"
        self._finished = False

    # -- driven by the protocol

    def start(self) -> None:
        r = self.request
        headers = httputil.HTTPHeaders()
        for name, value in r.raw_headers:
            headers.add(name, value)
        start_line = httputil.RequestStartLine(r.method, r.target, r.version)
        try:
            ready = self._delegate.headers_received(start_line, headers)
        except httputil.HTTPInputError as exc:  # e.g. no Host header, or two
            self._finished = True
            self.protocol._refuse(400, "bad_request", str(exc))
            return
        except Exception:
            log.exception("internal error in %s %s", r.method, r.path)
            ready = None
        if ready is not None:
            self._pumping = True
            self._pump_task = asyncio.ensure_future(self._pump(ready))

    def feed(self, chunk: bytes | None) -> None:
        """The next piece of the body; None once it is complete."""
        if self._pumping:
            self._pending.append(chunk)
            self._pending_bytes += len(chunk or b"")
            transport = self.protocol.transport
            if self._pending_bytes > _PAUSE_AT and not self._paused and transport is not None:
                self._paused = True  # tornado is slower than the client: hold the client
                transport.pause_reading()
            return
        waiting = self._deliver(chunk)
        if waiting is not None:
            self._pumping = True
            self._pump_task = asyncio.ensure_future(self._pump(waiting))

    def abandon(self) -> None:
        self._pending.clear()
        self.connection_lost()

    def connection_lost(self) -> None:
        if self._finished:
            return
        self._finished = True
        callback, self._close_callback = self._close_callback, None
        if not self._body_done:  # tornado is still reading: it tells the handler itself
            with contextlib.suppress(Exception):
                self._delegate.on_connection_close()
        elif callback is not None:
            callback()

    def _deliver(self, chunk: bytes | None) -> Awaitable[None] | None:
        try:
            if chunk is None:
                self._body_done = True
                self._delegate.finish()
                return None
            self._received += len(chunk)
            if self._received > self.max_body:
                self.protocol._bridged_body_too_large(self.max_body)
                return None
            return self._delegate.data_received(chunk)
        except Exception:
            log.exception("internal error in %s %s", self.request.method, self.request.path)
            return None

    async def _pump(self, waiting: Awaitable[None]) -> None:
        """Hand body chunks to tornado in order, waiting whenever it asks us to."""
        try:
            await waiting
            while self._pending and not self._finished:
                chunk = self._pending.popleft()
                self._pending_bytes -= len(chunk or b"")
                next_wait = self._deliver(chunk)
                if next_wait is not None:
                    await next_wait
                if self._paused and self._pending_bytes <= _PAUSE_AT // 2:
                    self._paused = False
                    transport = self.protocol.transport
                    if transport is not None and not self.protocol._closed:
                        transport.resume_reading()
        except Exception:
            log.exception("internal error in %s %s", self.request.method, self.request.path)
        finally:
            self._pumping = False

    # -- tornado's side (httputil.HTTPConnection)

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self._close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        self.max_body = max_body_size

    def write_headers(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
        chunk: bytes | None = None,
    ) -> asyncio.Future[None]:
        assert isinstance(start_line, httputil.ResponseStartLine)
        code = start_line.code
        protocol = self.protocol
        lines = [f"HTTP/1.1 {code} {start_line.reason}\r\n"]
        no_body = code in (204, 304) or code < 200
        if protocol._reading_body:
            protocol._keep_alive = False  # answered before the body: the rest is unreadable
        if not no_body and "Content-Length" not in headers:
            if protocol._http10:
                protocol._keep_alive = False  # 1.0 knows no chunks: the close ends the body
            else:
                self._chunked_response = True
                headers["Transfer-Encoding"] = "chunked"
        if not protocol._keep_alive:
            headers["Connection"] = "close"
        elif protocol._http10:
            headers["Connection"] = "keep-alive"
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.get_all())
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1")
        if chunk and not self._head_only:
            data += self._frame(chunk)
        return self._send(data)

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        if self._head_only or not chunk:
            return self._send(b"")
        return self._send(self._frame(chunk))

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        protocol = self.protocol
        tail = b"0\r\n\r\n" if self._chunked_response and not self._head_only else b""
        if protocol._exchange is self:
            protocol._write_and_continue(tail)
        elif protocol.transport is not None and tail and not protocol._closed:
            protocol.transport.write(tail)

    def _frame(self, chunk: bytes) -> bytes:
        if self._chunked_response:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk

    def _send(self, data: bytes) -> asyncio.Future[None]:
        protocol = self.protocol
        if data and protocol.transport is not None and not protocol._closed:
            protocol.transport.write(data)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _Context:
    """What tornado's HTTPServerRequest reads off its connection."""

    def __init__(self, protocol: HttpProtocol) -> None:
        transport = protocol.transport
        peer: Any = transport.get_extra_info("peername") if transport is not None else None
        self.remote_ip = peer[0] if isinstance(peer, tuple) else "0.0.0.0"
        self.protocol = "http"
        self.address = peer
