"""One accepted HTTP/1.1 connection: parse with llhttp, answer in order, bound everything.

How bytes flow: received bytes are fed to the parser in slices of at most
`_SLICE` bytes while no request is being answered; a complete request is
dispatched at once if none is in flight, else queued. While a request is in
flight, received bytes wait unparsed (counted, and reading pauses past
`max_head` of them), so requests are answered in order, one at a time, and a
pipelined request's head and body clocks start only once the answer before it
was written. While the client leaves more than `max_unsent` bytes of answers
unread, nothing more is read or answered on its connection.

A route may answer with a stream instead (`streaming`): the head now, then
one chunk per write for as long as it likes. The stream is the request in
flight until it ends, so what the client pipelines behind it waits.

Errors found here (framing, limits, tokens) are answered with the one JSON
envelope and the connection is closed: shut for writing first, then read and
dropped for a moment (`_LINGER`), so a reset does not destroy the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, TypeAlias

import httptools

from .errors import INTERNAL_MESSAGE, error_body
from .request import Request, Route, new_request
from .streaming import CLIENT_CLOSED, SERVER_CLOSED, UNREAD, OnClose, OnDrain, ResponseStream
from .tls import TlsTransport

if TYPE_CHECKING:
    from .server import HttpServer

log = logging.getLogger("kvcluster.server.http")

# Bytes handed to the parser at once. It bounds how far the parser can run
# ahead of the answers (the rest of a slice is parsed even if a request in it
# is still being answered) and how far a head's size is over-estimated (the
# parser does not say where in a slice a request began).
_SLICE: Final = 16 << 10
# A refused connection is shut for writing, and what the client still sends is
# read and dropped for up to this long, so that a reset does not destroy the
# error answer before the client has read it.
_LINGER: Final = 1.0

_IDLE, _HEAD, _BODY = 0, 1, 2  # where the connection is in the request being read
CLIENT, PEER, PENDING, REFUSED = "client", "peer", "pending", "refused"  # connection kinds
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Stop(Exception):
    """Raised in a parser callback to stop the parser (the connection is done)."""


_METHODS: dict[bytes, str] = {}  # llhttp only accepts the methods it knows: a small cache
_PREFIXES: dict[int, bytes] = {}


_BODYLESS: Final = frozenset({204, 304})  # answers that have no body (nor its headers)


def _prefix(status: int) -> bytes:
    prefix = _PREFIXES.get(status)
    if prefix is None:
        if type(status) is not int or not 200 <= status <= 599:
            raise ValueError(f"not a status for an answer: {status!r}")  # 1xx are the stack's
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        if status in _BODYLESS:
            prefix = f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")
        else:
            prefix = (
                f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: "
            ).encode("latin-1")
        _PREFIXES[status] = prefix
    return prefix


def _response(
    status: int,
    body: bytes,
    headers: Sequence[tuple[str, str]],
    close: bool,
    http10: bool,
    head: bool = False,
) -> bytes:
    """One whole answer: a Content-Length (but for 204 and 304, which have no
    body), never chunked (streams have their own head: `_stream_head`); to
    HEAD, the head only."""
    extra = _extra_headers(headers)
    if close:
        extra += b"Connection: close\r\n"
    elif http10:
        extra += b"Connection: keep-alive\r\n"
    prefix = _PREFIXES.get(status) or _prefix(status)
    if headers and headers[0][0] == "Content-Type":  # a route's own type (/metrics: text)
        prefix = prefix.replace(b"Content-Type: application/json\r\n", b"", 1)
    if status in _BODYLESS:
        if body:
            raise ValueError(f"a {status} answer has no body")
        return b"%s%s\r\n" % (prefix, extra)
    return b"%s%d\r\n%s\r\n%s" % (prefix, len(body), extra, b"" if head else body)


def _extra_headers(headers: Sequence[tuple[str, str]]) -> bytes:
    if not headers:
        return b""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers])
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        raise ValueError(f"a header name or value with CR or LF: {headers!r}")
    return text.encode("latin-1")


def _stream_head(
    status: int, headers: Sequence[tuple[str, str]], close: bool, chunked: bool
) -> bytes:
    """The head of a streamed answer: chunked, or (HTTP/1.0) ended by the close."""
    if type(status) is not int or not 200 <= status <= 599 or status in _BODYLESS:
        raise ValueError(f"not a status for a streamed answer: {status!r}")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b""
    connection = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%s%s%s\r\n" % (
        status,
        phrase.encode("latin-1"),
        framing,
        _extra_headers(headers),
        connection,
    )


class _Reply:
    """`reply(status, body, headers)` for one request: answers it once."""

    __slots__ = ("conn", "done", "head", "http10", "keep")

    def __init__(self, conn: ServerConnection, keep: bool, http10: bool, head: bool) -> None:
        self.conn = conn
        self.keep = keep
        self.http10 = http10
        self.head = head  # a HEAD request: the answer's head only
        self.done = False

    def __call__(self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
        if self.done:
            log.error("a second reply to one request was ignored (status %s)", status)
            return
        self.done = True
        self.conn.answer(self, status, body, headers)

    def start_stream(
        self,
        status: int,
        headers: Sequence[tuple[str, str]],
        on_close: OnClose | None,
        on_drain: OnDrain | None,
    ) -> ResponseStream:
        """Answer with a stream (see `streaming.start_stream`)."""
        if self.done:
            raise RuntimeError("this request was answered already")
        self.done = True
        return self.conn.start_stream(self, status, headers, on_close, on_drain)


_Queued: TypeAlias = tuple[Request, Route, bool, bool, int]  # request, route, keep, http10, size


class ServerConnection(asyncio.Protocol):
    """One accepted connection: parse, dispatch in order, answer, bound everything."""

    __slots__ = (
        "_began",
        "_body",
        "_body_size",
        "_certified",
        "_closed",
        "_continue_owed",
        "_eof",
        "_final",
        "_head",
        "_head_count",
        "_head_size",
        "_headers",
        "_held",
        "_http10",
        "_inflight",
        "_keep",
        "_line",
        "_line_len",
        "_linger_until",
        "_lingering",
        "_now",
        "_overhead",
        "_parser",
        "_phase",
        "_pumping",
        "_queue",
        "_queued_bytes",
        "_raw",
        "_read_paused",
        "_remote",
        "_route",
        "_since",
        "_slice_body",
        "_stopped",
        "_stream",
        "_stream_request",
        "_tls",
        "_url",
        "_write_paused",
        "_write_paused_at",
        "kind",
        "limits",
        "server",
        "transport",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.kind = CLIENT
        self._parser = httptools.HttpRequestParser(self)
        self._remote = ""
        # With TLS: whether the client showed a certificate from the peer CA
        # (a token route needs one); without TLS the token alone decides.
        self._certified = server.tls is None
        self._tls: TlsTransport | None = None
        self._closed = False  # closing or closed: nothing more is written
        self._stopped = False  # no more requests are parsed (refused, Connection: close, ...)
        self._lingering = False
        self._linger_until = 0.0
        self._eof = False
        self._final: bytes | None = None  # an error to write after the answer in flight
        # answering, in order
        self._inflight: _Reply | None = None
        self._stream: ResponseStream | None = None  # the answer in flight, if streamed
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0
        self._raw = bytearray()  # received, not yet parsed: a request is being answered
        self._pumping = False
        self._read_paused = False
        self._write_paused = False
        self._write_paused_at = 0.0
        self._continue_owed = False
        self._held = 0  # this connection's share of server.buffered
        # the request being read
        self._phase = _IDLE
        self._now = self._since = time.monotonic()  # _now: when the bytes being parsed came
        self._began = False  # a request began in the slice being parsed
        self._head_count = 0  # bytes of the head so far (over-estimated by < one slice)
        self._head_size = 0  # the complete head's size
        self._url: list[bytes] = []
        self._headers: list[bytes] = []  # names and values, in turn, as they came
        self._route: Route | None = None
        self._head: tuple[str, str, str, str, bool, dict[str, str]] = ("", "", "", "", False, {})
        self._stream_request: Request | None = None
        self._keep = True
        self._http10 = False
        self._body: list[bytes] = []
        self._body_size = 0
        self._slice_body = 0
        self._overhead = 0  # chunk framing and trailer bytes since the last chunk header
        self._line: list[bytes] = []
        self._line_len = 0

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self.kind = self.server.admit(self)
        if self.kind == REFUSED:
            # At max_connections + peer_reserve: not even a peer gets this one.
            self._closed = self._stopped = True
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=self.limits.max_unsent)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = peer[0]
            self._remote = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
        elif peer:
            self._remote = str(peer)
        if self.server.tls is not None:
            # Admitted and counted already: the handshake happens in data_received.
            self._tls = TlsTransport(transport, self.server.tls)  # type: ignore[arg-type]
            self.transport = self._tls  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._stopped = True
        self._inflight = None
        self._end_stream(CLIENT_CLOSED)
        self._queue.clear()
        self._raw = bytearray()
        self._body = []
        self._line = []
        self._queued_bytes = self._head_count = self._head_size = 0
        self._body_size = self._line_len = 0
        self.server.buffered -= self._held
        self._held = 0
        self.server.forget(self)

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return  # refused, lingering or told to close: what follows is dropped
        server = self.server
        tls = self._tls
        if tls is not None:
            shaking = not tls.handshaken
            try:
                data = tls.receive(data)
            except ssl.SSLError as exc:
                # An untrusted certificate, no TLS at all, a corrupt record:
                # nothing it sent was read as HTTP.
                server.refused["tls_handshake" if shaking else "tls_error"] += 1
                log.debug("TLS with %s failed: %s", self._remote, exc)
                if shaking:
                    # Let the alert (already written) reach the client: with TLS
                    # 1.3 it may be writing its request by now, and a reset would
                    # turn "unknown ca" into a bare EOF on its side.
                    self._linger()
                else:
                    self.abort()
                return
            if shaking and tls.handshaken:
                self._certified = server.is_peer_certificate(tls.peer_certificate())
                self._since = time.monotonic()  # the idle clock starts now
            if not data:
                return
        if self.kind != PEER and server.buffered + len(data) > self.limits.max_buffered:
            # Authenticated peers are exempt: an attack on the clients' side
            # must not cut the node's peer links.
            self._fail(503, "server_busy", "the node holds too many unfinished requests; retry")
            return
        if self._inflight is not None or self._queue or self._write_paused:
            self._raw += data  # parsed once the answers before it are written
            self._account()
            self._update_reading()
            return
        self._now = time.monotonic()
        if self._raw:
            self._raw += data
            self._pump(None)
        else:
            self._pump(data)

    def eof_received(self) -> bool:
        self._eof = True
        if self._stream is not None:
            # A client sends nothing more while it reads a stream: one that ends
            # its side has gone (etcd3gw cancels a watch so), and what is unsent
            # is for nobody.
            self._end_stream(CLIENT_CLOSED)
            self.abort()
            return False
        if self._lingering or (self._inflight is None and not self._queue):
            self._close()  # nothing to answer (a request cut short can never complete)
            return False
        return True  # answer what was sent before the end, then close

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests and
        # answering them until it does (its unsent answers stay under max_unsent).
        self._write_paused = True
        self._write_paused_at = time.monotonic()
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()
        if self._stream is not None:
            self._stream.drained()
        self._pump(None)

    @property
    def write_paused(self) -> bool:
        """The client leaves more than max_unsent bytes unread."""
        return self._write_paused

    # ------------------------------------------------------------ the server's calls

    def abort(self) -> None:
        self._closed = self._stopped = True
        self._end_stream(SERVER_CLOSED)
        if self.transport is not None:
            self.transport.abort()

    def check_deadlines(self, now: float) -> None:
        """Called by the server's sweep: enforce the deadline of the current state."""
        if self._closed:
            return
        limits = self.limits
        if self._lingering:
            if now > self._linger_until:
                self._close()
            return
        if self._write_paused:
            # A client that reads nothing for a whole idle timeout is gone or hostile.
            if now - self._write_paused_at > limits.idle_timeout:
                self.server.refused["unread"] += 1
                self._end_stream(UNREAD)
                self.abort()
            return
        if self._inflight is not None or self._queue:
            return  # the node is answering: the client waits for us
        waited = now - self._since
        phase = self._phase
        if phase == _IDLE:
            shaking = self._tls is not None and not self._tls.handshaken
            limit = limits.head_timeout if self.kind == PENDING or shaking else limits.idle_timeout
            if waited > limit:
                self.server.refused["idle"] += 1
                self._close()
        elif phase == _HEAD:
            if waited > limits.head_timeout:
                message = f"the request head was not complete within {limits.head_timeout:g} s"
                self._fail(408, "request_timeout", message)
        elif waited > limits.body_timeout and self._route is not None and not self._route.lines:
            message = f"the request body was not complete within {limits.body_timeout:g} s"
            self._fail(408, "request_timeout", message)

    def answer(
        self, reply: _Reply, status: int, body: bytes, headers: Sequence[tuple[str, str]]
    ) -> None:
        """Write the answer to the request in flight, then go on with the next one."""
        transport = self.transport
        if self._closed or transport is None or reply is not self._inflight:
            return
        close = not reply.keep
        try:
            data = _response(status, body, headers, close, reply.http10, reply.head)
        except Exception:
            log.exception("a handler replied with something that is not an answer")
            error = error_body("internal_error", INTERNAL_MESSAGE)
            data = _response(500, error, (), close, reply.http10, reply.head)
        transport.write(data)
        self._inflight = None
        # a pipelined request's clock starts now (answered at once: when its bytes came)
        self._since = self._now if self._pumping else time.monotonic()
        self._after_answer(close)

    def start_stream(
        self,
        reply: _Reply,
        status: int,
        headers: Sequence[tuple[str, str]],
        on_close: OnClose | None,
        on_drain: OnDrain | None,
    ) -> ResponseStream:
        """Write a streamed answer's head; the stream is the request in flight
        until it ends (see `streaming`)."""
        transport = self.transport
        chunked = not reply.http10
        if self._closed or transport is None or reply is not self._inflight or self._eof:
            if self._eof and not self._closed:
                self.abort()  # the client has ended its side: nobody will read the stream
            return ResponseStream(
                None, chunked=chunked, head_only=reply.head, on_close=None, on_drain=None
            )
        # HTTP/1.0 has no chunks: the end of the connection ends the answer.
        close = not reply.keep or reply.http10
        try:
            head = _stream_head(status, headers, close, chunked)
        except Exception:
            log.exception("a handler started a stream with something that is not an answer")
            reply.done = False
            reply(500, error_body("internal_error", INTERNAL_MESSAGE), ())
            return ResponseStream(
                None, chunked=chunked, head_only=reply.head, on_close=None, on_drain=None
            )
        stream = ResponseStream(
            self, chunked=chunked, head_only=reply.head, on_close=on_close, on_drain=on_drain
        )
        self._stream = stream
        _keep_probing(transport)
        transport.write(head)
        return stream

    def stream_write(self, stream: ResponseStream, data: bytes) -> bool:
        """One chunk of the stream in flight (see `ResponseStream.write`)."""
        transport = self.transport
        if stream is not self._stream or self._closed or transport is None:
            return False
        if self._write_paused:
            # The producer was told to wait (`writable`) and wrote anyway: the
            # client does not read, and nothing more is kept for it.
            self.server.refused["unread"] += 1
            self._end_stream(UNREAD)
            self.abort()
            return False
        stream.written += len(data)
        if stream.head_only:
            return True
        if stream.chunked:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            transport.write(data)
        return True

    def stream_end(self, stream: ResponseStream) -> None:
        """The route ended its stream: the last chunk, then the next request."""
        reply = self._inflight
        if stream is not self._stream or reply is None:
            return
        self._stream = None
        stream.open = False
        stream.on_close = stream.on_drain = None
        transport = self.transport
        if self._closed or transport is None:
            return
        if stream.chunked and not stream.head_only:
            transport.write(b"0\r\n\r\n")
        self._inflight = None
        self._since = time.monotonic()
        self._after_answer(not reply.keep or reply.http10)

    def _after_answer(self, close: bool) -> None:
        """The request in flight is answered (at once, or by the end of its stream):
        close, or send the refusal held back for a request behind it, or go on with
        the next pipelined request."""
        final, self._final = self._final, None
        if close:
            self._close()
            return
        if final is not None:
            assert self.transport is not None
            self.transport.write(final)
            self._linger()
            return
        if not self._pumping:
            self._pump(None)

    def _end_stream(self, reason: str) -> None:
        """The connection ends the stream in flight (gone, unread, closed)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.gone(reason)

    # ------------------------------------------------------------ flow

    def _pump(self, data: bytes | None) -> None:
        """Parse `data` (nothing is in flight), then dispatch queued requests and
        parse held bytes, in order, while nothing is being answered and the
        client reads its answers."""
        if self._pumping:
            if data:
                self._raw += data
            return
        self._pumping = True
        try:
            if data is not None:
                if len(data) <= _SLICE:  # _feed_slice, inline: the common case
                    before = self._phase
                    self._began = False
                    self._slice_body = 0
                    try:
                        self._parser.feed_data(data)
                    except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                        self._parse_error(exc)
                    else:
                        if self._phase:
                            self._bound(len(data), before)
                else:
                    self._feed(data)
            while (self._queue or self._raw or self._continue_owed) and not (
                self._closed or self._inflight is not None or self._write_paused
            ):
                if self._queue:
                    request, route, keep, http10, size = self._queue.popleft()
                    self._queued_bytes -= size
                    self._dispatch(request, route, keep, http10)
                elif self._stopped:
                    self._raw.clear()
                    self._continue_owed = False
                elif self._continue_owed:
                    self._continue_owed = False
                    if self.transport is not None:
                        self.transport.write(_CONTINUE)
                else:
                    data = bytes(self._raw)
                    self._raw.clear()
                    self._now = time.monotonic()
                    self._feed(data)
        finally:
            self._pumping = False
        if self._eof and not self._closed and self._inflight is None and not self._queue:
            self._close()  # the client ended its side and everything is answered
        if self._held or self._phase or self._raw or self._queue:
            self._account()
        if self._read_paused or self._write_paused or self._raw:
            self._update_reading()

    def _feed(self, data: bytes) -> None:
        n = len(data)
        if n <= _SLICE:
            self._feed_slice(data)
            return
        view = memoryview(data)
        offset = 0
        while offset < n and not self._stopped:
            if self._inflight is not None or self._queue or self._write_paused:
                self._raw += view[offset:]
                return
            self._feed_slice(view[offset : offset + _SLICE])
            offset += _SLICE

    def _feed_slice(self, piece: bytes | memoryview) -> None:
        before = self._phase
        self._began = False
        self._slice_body = 0
        try:
            self._parser.feed_data(piece)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_error(exc)
            return
        if self._phase:
            self._bound(len(piece), before)

    def _parse_error(self, exc: Exception) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            self._fail(400, "bad_request", "protocol upgrades (and CONNECT) are not supported")
            return
        if self._stopped or self._closed:
            return  # a callback stopped the parser on purpose
        cause = exc.__context__
        if cause is not None and not isinstance(cause, _Stop):
            log.error("internal error in the HTTP stack", exc_info=cause)
            self._fail(500, "internal_error", INTERNAL_MESSAGE)
        else:
            self._fail(400, "bad_request", f"malformed request: {exc}")

    def _bound(self, fed: int, before: int) -> None:
        """After a slice of `fed` bytes that ended inside a request (`before`: where
        it began), bound what the parser may hold that the callbacks do not show."""
        phase = self._phase
        limits = self.limits
        if phase == _HEAD:
            # The parser keeps a header it has not finished inside itself: bound
            # what it may hold by counting the slices fed since the request began.
            count = fed if self._began else self._head_count + fed
            self._head_count = count
            if count > limits.max_head + _SLICE:
                if sum(map(len, self._url)) > limits.max_head:
                    message = f"the request target is over {limits.max_head} bytes"
                    self._fail(414, "uri_too_long", message)
                else:
                    message = f"the request head is over {limits.max_head} bytes"
                    self._fail(431, "request_header_too_large", message)
        elif phase == _BODY and before == _BODY and not self._began:
            # Chunk extensions and trailers are framing, not body: bound them too.
            self._overhead += fed - self._slice_body
            if self._overhead > limits.max_head + _SLICE:
                message = f"chunk framing or trailers over {limits.max_head} bytes"
                self._fail(400, "bad_request", message)

    def _dispatch(self, request: Request, route: Route, keep: bool, http10: bool) -> None:
        reply = self._inflight = _Reply(self, keep, http10, request.method == "HEAD")
        try:
            route.handler(request, reply)
        except Exception:
            self._handler_failed(request, reply)

    def _handler_failed(self, request: Request, reply: _Reply) -> None:
        log.exception("internal error in %s %s", request.method, request.path[:200])
        if not reply.done:
            reply(500, error_body("internal_error", INTERNAL_MESSAGE), ())

    def _account(self) -> None:
        held = (
            len(self._raw)
            + self._head_count
            + self._head_size
            + self._body_size
            + self._line_len
            + self._queued_bytes
        )
        if held != self._held:
            self.server.buffered += held - self._held
            self._held = held

    def _update_reading(self) -> None:
        if not (self._read_paused or self._write_paused or self._raw):
            return  # reading, and no reason to stop
        transport = self.transport
        if transport is None or self._closed:
            return
        # While a stream is out, reading goes on (bounded by max_head): the only
        # thing left to read is the client's end, which ends the stream.
        pause = not self._lingering and (
            (self._write_paused and self._stream is None) or len(self._raw) > self.limits.max_head
        )
        if pause != self._read_paused:
            self._read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _fail(self, status: int, code: str, message: str) -> None:
        """Answer an error the stack found, and close: what follows is unreadable
        or unwanted. Whatever was held for unfinished requests is dropped."""
        if self._closed or self._lingering or self._final is not None:
            return
        self.server.refused[code] += 1
        self._stopped = True
        self._phase = _IDLE
        self._continue_owed = False
        self._queue.clear()
        self._raw = bytearray()
        self._body, self._line = [], []
        self._queued_bytes = self._head_count = self._head_size = 0
        self._body_size = self._line_len = 0
        self._account()
        data = _response(status, error_body(code, message), (), True, False)
        if self._inflight is not None:
            self._final = data  # after the answer being prepared, in order
            return
        if self.transport is not None:
            self.transport.write(data)
        self._linger()

    def _refuse(self, status: int, code: str, message: str) -> None:
        """`_fail` from inside a parser callback: also stops the parser."""
        self._fail(status, code, message)
        raise _Stop

    def _linger(self) -> None:
        transport = self.transport
        if transport is None or self._closed:
            return
        self._stopped = self._lingering = True
        self._linger_until = time.monotonic() + _LINGER
        if self._eof or not transport.can_write_eof():
            self._close()
            return
        transport.write_eof()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    def _close(self) -> None:
        if not self._closed:
            self._closed = self._stopped = True
            if self.transport is not None:
                self.transport.close()

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._phase = _HEAD
        self._began = True
        self._since = self._now
        self._url = []
        self._headers = []
        self._head_count = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._phase == _HEAD:  # else a trailer: ignored (its bytes are bounded as framing)
            self._headers += (name, value)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._since = self._now
        self._overhead = self._head_count = 0
        parser = self._parser
        limits = self.limits
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        # lower-case names; repeats joined with ", "
        raw = self._headers
        headers: dict[str, str] = {}
        pairs = iter(raw)
        for name, value in zip(pairs, pairs, strict=False):
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1").rstrip(" \t")
            if key in headers:
                headers[key] = f"{headers[key]}, {text}"
            else:
                headers[key] = text
        self._head_size = size = len(url) + sum(map(len, raw)) + 2 * len(raw) + 16
        if len(url) > limits.max_head:
            message = f"the request target is over {limits.max_head} bytes"
            self._refuse(414, "uri_too_long", message)
        elif size > limits.max_head:
            message = f"the request head is over {limits.max_head} bytes"
            self._refuse(431, "request_header_too_large", message)
        keep = parser.should_keep_alive()
        if keep and "connection" not in headers:
            # llhttp reads only HTTP/0.9, 1.0, 1.1 and 2.0, and keeps a connection
            # open without a Connection header only for 1.1: no need to ask
            # (get_http_version formats a new string on every call).
            version = "1.1"
        else:
            version = parser.get_http_version()
            if version != "1.1" and version != "1.0":
                self._refuse(400, "bad_request", f"HTTP/{version} is not supported; use HTTP/1.1")
        if parser.should_upgrade():
            self._refuse(400, "bad_request", "protocol upgrades (and CONNECT) are not supported")
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method)
        if method is None:
            method = _METHODS.setdefault(raw_method, raw_method.decode("ascii"))
        target = url.decode("latin-1")
        path, _, query = target.partition("?")
        auth = headers.get("authorization")
        server = self.server
        token = auth is not None and server.token_matches(auth)
        peer = token and self._certified

        try:
            found = server.router(method, path)
        except Exception:
            log.exception("the router failed on %s %s", method, path[:200])
            found = 500
        if type(found) is Route:
            route, miss = found, None
        else:
            route, miss = server.route_error(method, path, found)
        if self.kind != CLIENT:
            if self.kind == PENDING and not (route.token and peer):
                message = "the node is at its connection limit; retry later"
                self._refuse(503, "too_many_connections", message)
            server.promote(self)
        elif peer:
            server.promote(self)
        if route.token and not peer:
            # Before the body is read: an unauthenticated client cannot make
            # the node buffer a peer-sized body.
            if token:
                message = (
                    "this route needs a client certificate issued by the cluster's peer CA "
                    "(--peer-trusted-ca-file), besides the token"
                )
                self._refuse(403, "forbidden", message)
            message = "this route needs the cluster token (Authorization: Bearer <token>)"
            self._refuse(401, "unauthorized", message)
        te = headers.get("transfer-encoding")
        if te is not None and te.lower() != "chunked":
            self._refuse(400, "bad_request", f"unsupported Transfer-Encoding {te[:40]!r}")
        cl = headers.get("content-length")
        length = 0
        if cl is not None:
            try:
                length = int(cl)
            except ValueError:
                self._refuse(400, "bad_request", f"bad Content-Length {cl[:40]!r}")
            if length > route.max_body and route.lines is None:
                message = f"the request body is over {route.max_body} bytes"
                self._refuse(413, "payload_too_large", message)
        expect = headers.get("expect")
        if expect is not None and (length or te is not None):
            if expect.lower() != "100-continue":
                self._refuse(417, "expectation_failed", f"unsupported Expect {expect[:40]!r}")
            if miss is not None:
                self._refuse(*miss)  # why have the body sent at all
            if self._inflight is None and not self._queue and not self._write_paused:
                assert self.transport is not None
                self.transport.write(_CONTINUE)
            else:
                self._continue_owed = True
        self._keep = keep
        self._http10 = version == "1.0"
        self._route = route
        if route.lines is not None:
            self._stream_request = new_request(
                method, target, path, query, headers, b"", peer, self._remote
            )
        else:
            self._head = (method, target, path, query, peer, headers)

    def on_chunk_header(self) -> None:
        self._overhead = 0

    def on_body(self, body: bytes) -> None:
        route = self._route
        assert route is not None
        self._slice_body += len(body)
        if route.lines is not None:
            self._take_lines(route, body)
            return
        self._body_size += len(body)
        if self._body_size > route.max_body:
            message = f"the request body is over {route.max_body} bytes"
            self._refuse(413, "payload_too_large", message)
        self._body.append(body)

    def on_message_complete(self) -> None:
        route = self._route
        assert route is not None
        size = self._head_size + self._body_size
        if route.lines is not None:
            if self._line_len:
                self._refuse(400, "bad_request", "the streamed body ends inside a line")
            request = self._stream_request
            assert request is not None
            self._stream_request = None
        else:
            parts = self._body
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            method, target, path, query, peer, headers = self._head
            request = new_request(method, target, path, query, headers, body, peer, self._remote)
        keep, http10 = self._keep, self._http10
        self._phase = _IDLE
        self._since = self._now
        self._route = None
        self._body = []
        self._body_size = self._head_size = 0
        if not keep:
            self._stopped = True  # the client sends nothing after this request
        if self._inflight is None and not self._queue and not self._write_paused:
            # _dispatch, inline: the common case
            reply = self._inflight = _Reply(self, keep, http10, request.method == "HEAD")
            try:
                route.handler(request, reply)
            except Exception:
                self._handler_failed(request, reply)
        else:
            self._queue.append((request, route, keep, http10, size))
            self._queued_bytes += size
        if self._stopped or self._closed:
            raise _Stop

    def _take_lines(self, route: Route, data: bytes) -> None:
        """Pass each complete line of a streamed body on, as it arrives."""
        limit = route.max_body
        newline = data.find(b"\n")
        if newline < 0:
            self._line.append(data)
            self._line_len += len(data)
            if self._line_len > limit:
                self._refuse(400, "bad_request", f"a streamed line is over {limit} bytes")
            return
        request = self._stream_request
        assert request is not None and route.lines is not None
        deliver = route.lines
        start = 0
        while newline >= 0:
            if self._line:
                self._line.append(data[start:newline])
                line = b"".join(self._line)
                self._line = []
                self._line_len = 0
            else:
                line = data[start:newline]
            if len(line) > limit:
                self._refuse(400, "bad_request", f"a streamed line is over {limit} bytes")
            try:
                deliver(request, line)
            except Exception:
                log.exception("internal error in a line of %s %s", request.method, request.path)
            if self._closed or self._stopped:
                raise _Stop
            start = newline + 1
            newline = data.find(b"\n", start)
        if start < len(data):
            rest = data[start:]
            self._line.append(rest)
            self._line_len = len(rest)
            if self._line_len > limit:
                self._refuse(400, "bad_request", f"a streamed line is over {limit} bytes")


# A stream can stay silent for hours (a watch on a key nobody writes) and holds
# its connection and whatever the route keeps for it: a client that vanished
# without closing (a machine off, a cable out) must still be noticed. TCP
# keepalive probes an idle stream's peer after 60 s, every 10 s, 6 times:
# a dead peer ends the stream within about 2 minutes (on Linux).
STREAM_KEEPALIVE = ((getattr(socket, "TCP_KEEPIDLE", None), 60), (socket.TCP_KEEPINTVL, 10))


def _keep_probing(transport: object) -> None:
    get = getattr(transport, "get_extra_info", None)
    sock = get("socket") if get is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
        for option, value in STREAM_KEEPALIVE:
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
