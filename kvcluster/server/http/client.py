"""The node's one internal HTTP/1.1 client: llhttp (httptools) on an asyncio.Protocol.

Used to forward a client's request to the leader, for the peer links (one
long chunked POST per peer, written as we go), for a joining node's
POST /register, and by load generators. Lean on purpose: no task per request;
no timer per request either (a connection keeps one timer, armed for the
deadline of the request in flight; it is moved only when it fires before a
later request's deadline or a request's deadline comes sooner, so back-to-back
requests with the same timeout arm it about once per timeout); IP literals are
connected without the resolver's thread; and a reused keep-alive connection
that the server closed while idle is noticed before a request is written on
it (its `eof_received`/`connection_lost`), so that request is sent on a new
connection instead of being lost. (A close that reaches this process in the
very loop iteration a request is written can still be missed; that request
fails with `sent=True`, as any request whose connection breaks does.)

TLS: a call to a host and port registered with `use_tls` (a Cluster's nodes,
in the process that runs it) or, failing that, any call of a process that set
`use_tls_by_default` (a TLS node: every member it calls is https) goes over
TLS with that context, which checks the server's certificate and host name.

Responses may have a Content-Length, a chunked body, or a body that ends with
the connection; the head (64 KiB) and the body (`max_body`) are bounded. A
response that never ends (a watch) is read as it arrives with `read_stream`:
each piece of its body goes to a callback, stamped with its arrival time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httptools

MAX_RESPONSE_HEAD: Final = 64 << 10
MAX_RESPONSE_BODY: Final = 64 << 20
MAX_ERROR_BODY: Final = 64 << 10  # what a streamed request keeps of a refusal's body
_SLICE: Final = 16 << 10  # bytes fed to the parser at once (bounds the head estimate)
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


class ConnectionFailed(Exception):
    """No usable answer. `sent` False: the request certainly did not reach the
    server (connect failed, or nothing was written); True: its outcome is unknown."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes


class _Protocol(asyncio.Protocol):
    """One client connection: parses the responses to the requests written on it."""

    def __init__(self, max_body: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False  # the server ended the connection (or it was closed here)
        self.max_body = max_body
        self.stream = False  # a RequestStream's: its end without an answer is None, not an error
        self.waiter: asyncio.Future[Response | None] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._in_head = False
        self._began = False
        self._head_count = 0
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._until_close = False  # a body without Content-Length or chunks: ends at EOF
        self._failed: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadline = 0.0  # loop time by which the request in flight must be answered
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when `_timer` fires
        # A streamed response (`read_stream`): a 2xx body goes to `sink` as it
        # arrives, stamped with `arrival` (time.monotonic() when the bytes came,
        # before any parsing); `head` is done once the head is parsed.
        self.sink: Callable[[bytes, float], None] | None = None
        self.head: asyncio.Future[None] | None = None
        self.arrival = 0.0

    # -- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.arrival = time.monotonic()
        waiter = self.waiter
        if waiter is None or waiter.done():
            self._close()  # nothing was asked: the connection is not in a state we know
            return
        pieces = (data,) if len(data) <= _SLICE else _slices(data)
        for piece in pieces:
            self._began = False
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserError as exc:
                self._fail(self._failed or f"malformed response: {exc}")
                return
            except httptools.HttpParserUpgrade:
                self._fail("the server switched protocols")
                return
            if self.closed or self.waiter is None or self.waiter.done():
                return
            if self._in_head:
                self._head_count = len(piece) if self._began else self._head_count + len(piece)
                if self._head_count > MAX_RESPONSE_HEAD + _SLICE:
                    self._fail(f"the response head is over {MAX_RESPONSE_HEAD} bytes")
                    return

    def eof_received(self) -> bool:
        waiter = self.waiter
        if waiter is not None and not waiter.done() and self._until_close and not self._in_head:
            self._finish()
        self._close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.head is not None and not self.head.done():
            self.head.set_exception(
                ConnectionFailed(f"connection lost: {exc or 'closed by the server'}", sent=True)
            )
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self._until_close and not self._in_head and self._status:
                self._finish()
            elif self.stream:
                waiter.set_result(None)
            else:
                waiter.set_exception(
                    ConnectionFailed(f"connection lost: {exc or 'closed by the server'}", sent=True)
                )

    # -- parser callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._began = True
        self._head_count = 0
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._until_close = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").rstrip(" \t")
        headers = self._headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._status = status = self._parser.get_status_code()
        headers = self._headers
        self._until_close = (
            status >= 200
            and status not in (204, 304)
            and "content-length" not in headers
            and "transfer-encoding" not in headers
        )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            self._failed = f"the response body is over {self.max_body} bytes"
            raise ValueError(self._failed)
        if self.head is not None and not self.head.done() and status >= 200:
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and 200 <= self._status < 300:
            self.sink(body, self.arrival)  # a stream: nothing kept here
            return
        self._body_size += len(body)
        if self._body_size > self.max_body:
            self._failed = f"the response body is over {self.max_body} bytes"
            raise ValueError(self._failed)
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            return  # 100 Continue and friends: the answer is still to come
        keep = self._parser.should_keep_alive()
        self._finish()
        if not keep:
            self._close()

    # -- ours

    def expect(self, deadline: float | None = None) -> asyncio.Future[Response | None]:
        """A future for the next response, before the request is written; it
        fails with TimeoutError if no response is complete at `deadline` (loop time)."""
        assert self._loop is not None
        self.waiter = waiter = self._loop.create_future()
        self._failed = None
        self._in_head = self._until_close = False
        self._status = 0
        if deadline is not None:
            self._deadline = deadline
            timer = self._timer
            if timer is None or deadline < self._timer_at:
                if timer is not None:
                    timer.cancel()
                self._timer_at = deadline
                self._timer = self._loop.call_at(deadline, self._deadline_passed)
            # else the timer fires before `deadline`, and then moves itself there
        return waiter

    def _deadline_passed(self) -> None:
        self._timer = None
        waiter = self.waiter
        if waiter is None or waiter.done() or self.closed or self.stream:
            return  # idle: the next request arms the timer again
        if self._deadline > self._timer_at:  # armed for an earlier request: move it
            assert self._loop is not None
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._deadline_passed)
            return
        waiter.set_exception(TimeoutError())

    def _finish(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        response = Response(self._status, self._headers, body)
        self._body = []
        self._body_size = 0
        self._until_close = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, message: str) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_exception(ConnectionFailed(message, sent=True))
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            if self.stream:
                waiter.set_result(None)
            else:
                waiter.set_exception(ConnectionFailed(message, sent=True))
        self._close()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _slices(data: bytes) -> list[memoryview]:
    view = memoryview(data)
    return [view[offset : offset + _SLICE] for offset in range(0, len(data), _SLICE)]


_tls_by_address: dict[tuple[str, int], ssl.SSLContext] = {}
_tls_default: list[ssl.SSLContext | None] = [None]


def use_tls(host: str, port: int, context: ssl.SSLContext | None) -> None:
    """Calls to host:port go over TLS with `context` (None: plain HTTP again)."""
    if context is None:
        _tls_by_address.pop((host, port), None)
    else:
        _tls_by_address[(host, port)] = context


def use_tls_by_default(context: ssl.SSLContext | None) -> None:
    """Every call to an address not registered with `use_tls` uses `context`."""
    _tls_default[0] = context


def tls_for(host: str, port: int) -> ssl.SSLContext | None:
    return _tls_by_address.get((host, port), _tls_default[0])


async def _connect(host: str, port: int, max_body: int) -> _Protocol:
    """A connected protocol (after the TLS handshake, for a TLS address);
    ConnectionFailed(sent=False) if no address answers or the handshake fails."""
    loop = asyncio.get_running_loop()
    tls = tls_for(host, port)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectionFailed(f"cannot resolve {host}: {exc}", sent=False) from exc
        addresses: list[tuple[int, Any]] = [(fam, addr) for fam, _, _, _, addr in infos]
    else:
        literal_family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        addresses = [(literal_family, (host, port))]
    error: OSError | None = None
    for family, address in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
            if tls is None:
                _, protocol = await loop.create_connection(lambda: _Protocol(max_body), sock=sock)
            else:
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(max_body), sock=sock, ssl=tls, server_hostname=host
                )
            return protocol
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise ConnectionFailed(f"cannot connect to {host}:{port}: {error}", sent=False)


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _head(
    method: str, target: str, host: str, headers: Mapping[str, str] | None, framing: str
) -> bytes:
    if " " in target or "\r" in target or "\n" in target:
        raise ValueError(f"a request target with a space or line break: {target[:100]!r}")
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{framing}"
    if headers:
        for name, value in headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
                raise ValueError(f"a header with CR, LF or a colon in its name: {name!r}")
            head += f"{name}: {value}\r\n"
    return (head + "\r\n").encode("latin-1")


class HttpConnection:
    """One keep-alive connection, one request at a time; reconnects when needed."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._host_header = _host_header(host, port)
        self._protocol: _Protocol | None = None

    @property
    def open(self) -> bool:
        """Whether a connection is open (as far as we know) and may be reused."""
        return self._protocol is not None and not self._protocol.closed

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        max_body: int = MAX_RESPONSE_BODY,
    ) -> Response:
        """Send one request and read its response. ConnectionFailed says whether
        the request may have reached the server (`sent`)."""
        framing = f"Content-Length: {len(body)}\r\n" if body or method in _BODY_METHODS else ""
        data = _head(method, target, self._host_header, headers, framing)
        if body:
            data += body
        deadline = asyncio.get_running_loop().time() + timeout
        written = False
        try:
            protocol = self._protocol
            if protocol is None or protocol.closed:
                # Never used, or the server closed it while it was idle: a
                # request written on it would be lost, so it goes on a new one.
                if protocol is not None:
                    protocol.abort()
                self._protocol = None
                async with asyncio.timeout_at(deadline):
                    protocol = self._protocol = await _connect(self.host, self.port, max_body)
            protocol.max_body = max_body
            waiter = protocol.expect(deadline)
            assert protocol.transport is not None
            protocol.transport.write(data)
            written = True
            response = await waiter
        except TimeoutError as exc:
            self.close()
            message = f"{method} {target[:100]}: no answer within {timeout:g} s"
            raise ConnectionFailed(message, sent=written) from exc
        except ConnectionFailed:
            self.close()
            raise
        except BaseException:
            self.close()  # cancelled mid-request: the connection's state is unknown
            raise
        if response is None:  # pragma: no cover - a request's waiter gets a response
            self.close()
            raise ConnectionFailed("no response", sent=True)
        return response

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.abort()
            self._protocol = None


class ConnectionPool:
    """Keep-alive connections to one node (`http://host:port`), for concurrent requests."""

    def __init__(self, base_url: str, max_idle: int = 64) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            raise ValueError(f"expected http(s)://host:port, got {base_url!r}")
        if parts.scheme == "https" and tls_for(parts.hostname, parts.port) is None:
            raise ValueError(f"{base_url} is https, but this process has no TLS context for it")
        self.base_url = base_url
        self.host, self.port = parts.hostname, parts.port
        self._max_idle = max_idle
        self._idle: list[HttpConnection] = []

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        max_body: int = MAX_RESPONSE_BODY,
    ) -> Response:
        conn = None
        while self._idle:
            candidate = self._idle.pop()
            if candidate.open:
                conn = candidate
                break
            candidate.close()  # the server closed it while it was idle
        if conn is None:
            conn = HttpConnection(self.host, self.port)
        response = await conn.request(method, target, body, headers, timeout, max_body)
        if conn.open and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return response

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class RequestStream:
    """A chunked POST whose body is written as we go (a peer link).

    `send(data)` writes `data` as one chunk at once; `closed` is done when the
    server answered (its Response) or the connection ended (None)."""

    def __init__(self, protocol: _Protocol, waiter: asyncio.Future[Response | None]) -> None:
        self._protocol = protocol
        self.closed: asyncio.Future[Response | None] = waiter
        waiter.add_done_callback(self._ended)

    @property
    def unsent(self) -> int:
        """Bytes written but still held by the transport (the peer is slow)."""
        transport = self._protocol.transport
        if transport is None or self._protocol.closed:
            return 0
        return transport.get_write_buffer_size()

    def send(self, data: bytes) -> None:
        """Write one chunk now. ConnectionFailed(sent=False) if the stream has ended."""
        protocol = self._protocol
        if protocol.closed or self.closed.done() or protocol.transport is None:
            raise ConnectionFailed("the stream has ended", sent=False)
        if data:  # an empty chunk would end the body
            protocol.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def finish(self) -> None:
        """End the body; the server then answers, and `closed` gets its response."""
        protocol = self._protocol
        if not protocol.closed and protocol.transport is not None:
            protocol.transport.write(b"0\r\n\r\n")

    def close(self) -> None:
        self._protocol.abort()
        if not self.closed.done():
            self.closed.set_result(None)

    def _ended(self, future: asyncio.Future[Response | None]) -> None:
        # Answered or lost: either way the stream is over, and so is its connection.
        self._protocol.abort()


async def open_stream(
    host: str,
    port: int,
    target: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    max_body: int = MAX_RESPONSE_BODY,
) -> RequestStream:
    """Connect and send the head of a chunked POST; ConnectionFailed if that fails."""
    framing = "Transfer-Encoding: chunked\r\n"
    head = _head("POST", target, _host_header(host, port), headers, framing)
    try:
        async with asyncio.timeout(timeout):
            protocol = await _connect(host, port, max_body)
    except TimeoutError as exc:
        raise ConnectionFailed(f"cannot connect to {host}:{port} in time", sent=False) from exc
    protocol.stream = True
    waiter = protocol.expect()
    assert protocol.transport is not None
    protocol.transport.write(head)
    return RequestStream(protocol, waiter)


class ResponseStream:
    """A response being read as it arrives (`read_stream`): `status` and
    `headers` from its head; its body went to the sink. `ended` is done when the
    response or its connection ended: with the Response (its body empty for a
    2xx, else the start of the refusal's body), or None if the connection broke."""

    def __init__(self, protocol: _Protocol, waiter: asyncio.Future[Response | None]) -> None:
        self._protocol = protocol
        self.status = protocol._status
        self.headers = protocol._headers
        self.ended: asyncio.Future[Response | None] = waiter
        waiter.add_done_callback(lambda _: protocol.abort())

    def close(self) -> None:
        """End it now (the server sees the connection close)."""
        self._protocol.abort()
        if not self.ended.done():
            self.ended.set_result(None)


async def read_stream(
    host: str,
    port: int,
    method: str,
    target: str,
    body: bytes,
    sink: Callable[[bytes, float], None],
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> ResponseStream:
    """Send one request on a connection of its own and return once its answer's
    head arrived; a 2xx body then goes to `sink(piece, arrival)` piece by piece
    as it comes, never kept here (the sink bounds what it keeps). A refusal's
    body (up to MAX_ERROR_BODY) is in `ended`'s Response. ConnectionFailed if
    no head came within `timeout`."""
    framing = f"Content-Length: {len(body)}\r\n"
    data = _head(method, target, _host_header(host, port), headers, framing) + body
    protocol: _Protocol | None = None
    written = False
    try:
        async with asyncio.timeout(timeout):
            protocol = await _connect(host, port, MAX_ERROR_BODY)
            protocol.stream = True  # its end without a complete answer is None, not an error
            protocol.sink = sink
            protocol.head = asyncio.get_running_loop().create_future()
            waiter = protocol.expect()
            assert protocol.transport is not None
            protocol.transport.write(data)
            written = True
            await protocol.head
    except TimeoutError as exc:
        if protocol is not None:
            protocol.abort()
        raise ConnectionFailed(
            f"{method} {target[:100]}: no answer within {timeout:g} s", sent=written
        ) from exc
    except BaseException:
        if protocol is not None:
            protocol.abort()
        raise
    return ResponseStream(protocol, waiter)
