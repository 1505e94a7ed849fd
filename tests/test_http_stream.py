"""Streamed answers on the HTTP server (`kvcluster.server.http.streaming`), on real sockets.

As in test_http_server.py (whose harness this reuses): a real `HttpServer` on
127.0.0.1, clients that write and read raw bytes, small limits so that each
bound is reached quickly, waits on conditions rather than fixed sleeps. Here
the routes answer with a stream the test drives: it writes chunks, ends the
stream, or leaves it open while the client goes away or stops reading.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field

import pytest
from loops import both_loops, run_loop
from test_http_server import (
    FAST,
    READ_TIMEOUT,
    TOKEN,
    Answer,
    App,
    Client,
    Harness,
    http,
    listening_socket,
    until,
)

from kvcluster.server.http import (
    HttpServer,
    Limits,
    Reply,
    Request,
    ResponseStream,
    Route,
    start_stream,
)


@dataclass
class StreamApp(App):
    """App's routes plus /watch, which answers with a stream the test drives."""

    streams: list[ResponseStream] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # on_close reasons, in order
    drains: int = 0
    status: int = 200

    def router(self, method: str, path: str) -> Route | int | None:
        if path == "/watch":
            return Route(self.watch)
        if path == "/watch-late":
            return Route(self.watch_late)
        return super().router(method, path)

    def watch(self, request: Request, reply: Reply) -> None:
        self.calls.append(f"{request.method} {request.target}")
        stream = start_stream(
            reply,
            self.status,
            [("X-Stream", "yes")],
            on_close=self.closed.append,
            on_drain=self.drained,
        )
        self.streams.append(stream)

    def watch_late(self, request: Request, reply: Reply) -> None:
        self.held.append((request, reply))

    def drained(self) -> None:
        self.drains += 1


class StreamClient(Client):
    async def stream_head(self, timeout: float = READ_TIMEOUT) -> Answer:
        """A streamed answer's head (its body is read chunk by chunk)."""
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status, reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Answer(int(status), reason, headers, b"")

    async def chunk(self, timeout: float = READ_TIMEOUT) -> bytes:
        """The next chunk's data; b"" for the last chunk (which is then consumed)."""
        size_line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), timeout)
        size = int(size_line[:-2].split(b";")[0], 16)
        data = await asyncio.wait_for(self.reader.readexactly(size + 2), timeout)
        assert data[-2:] == b"\r\n", data[-10:]
        return data[:-2]


async def connect(h: Harness, *, rcvbuf: int | None = None) -> StreamClient:
    c = await h.connect(rcvbuf=rcvbuf)
    sc = StreamClient(c.reader, c.writer)
    h.clients[-1] = sc
    return sc


def app_of(h: Harness) -> StreamApp:
    assert isinstance(h.app, StreamApp)
    return h.app


def run_streams(scenario: object, limits: Limits = FAST) -> None:
    """test_http_server.run with a StreamApp."""

    async def main() -> None:
        app = StreamApp()
        server = HttpServer(app.router, token=TOKEN, limits=limits)
        sock = listening_socket()
        await server.listen([sock])
        h = Harness(server, sock.getsockname()[1], app)
        try:
            async with asyncio.timeout(90):
                await scenario(h)  # type: ignore[operator]
        finally:
            for client in h.clients:
                client.close()
            server.close()
        await until(lambda: server.connections == 0, "the connections to close")
        assert server.clients == server.peers == server.pending == 0
        assert server.buffered == 0

    run_loop(main())


# ---------------------------------------------------------------------- framing


@both_loops
def test_chunks_arrive_as_written_and_the_connection_goes_on_after_the_end() -> None:
    async def scenario(h: Harness) -> None:
        app = app_of(h)
        c = await connect(h)
        await c.send(http("POST", "/watch", b'{"create_request": {}}'))
        head = await c.stream_head()
        assert head.status == 200
        assert head.headers["transfer-encoding"] == "chunked"
        assert head.headers["content-type"] == "application/json"
        assert head.headers["x-stream"] == "yes"
        assert "content-length" not in head.headers and "connection" not in head.headers
        await until(lambda: len(app.streams) == 1, "the stream")
        (stream,) = app.streams
        # A request pipelined behind the stream waits for its end.
        await c.send(http("GET", "/echo?after"))
        for i in range(5):  # each write is one chunk, sent at once
            message = b'{"n": %d}\n' % i
            assert stream.writable and stream.write(message)
            assert await c.chunk() == message
        assert stream.write(b"")  # nothing: an empty chunk would end the stream
        big = b"x" * 100_000 + b"\n"
        assert stream.write(big)
        assert await c.chunk() == big
        assert app.calls == ["POST /watch"]
        stream.end()
        assert not stream.open and not stream.writable
        assert not stream.write(b"late")  # after the end: nothing is sent
        assert await c.chunk() == b""  # the last chunk, "0\r\n\r\n"
        after = await c.answer()
        assert after.status == 200 and after.json()["query"] == "after"
        assert app.closed == []  # the route's own end is not an on_close
        await c.assert_open()

    run_streams(scenario)


def test_http_1_0_streams_end_with_the_connection() -> None:
    async def scenario(h: Harness) -> None:
        app = app_of(h)
        c = await connect(h)
        await c.send(http("POST", "/watch", b"{}", version="HTTP/1.0"))
        head = await c.stream_head()
        assert "transfer-encoding" not in head.headers  # HTTP/1.0 has no chunks
        assert head.headers["connection"] == "close"
        await until(lambda: len(app.streams) == 1, "the stream")
        (stream,) = app.streams
        assert stream.write(b"one\n") and stream.write(b"two\n")
        stream.end()
        rest = await asyncio.wait_for(c.reader.read(), READ_TIMEOUT)
        assert rest == b"one\ntwo\n"
        assert app.closed == []

    run_streams(scenario)


def test_a_head_request_gets_the_head_of_a_stream_only() -> None:
    async def scenario(h: Harness) -> None:
        app = app_of(h)
        c = await connect(h)
        await c.send(http("HEAD", "/watch"))
        head = await c.stream_head()
        assert head.status == 200 and head.headers["transfer-encoding"] == "chunked"
        await until(lambda: len(app.streams) == 1, "the stream")
        (stream,) = app.streams
        assert stream.write(b"nothing on the wire\n")
        stream.end()
        await c.assert_open()  # the next answer follows the head directly

    run_streams(scenario)


def test_a_stream_with_a_status_that_has_no_body_is_a_500() -> None:
    async def scenario(h: Harness) -> None:
        app = app_of(h)
        app.status = 204
        c = await connect(h)
        answer = await c.request(http("POST", "/watch", b"{}"))
        assert answer.status == 500 and answer.json()["error"] == "internal_error"
        (stream,) = app.streams
        assert not stream.open and not stream.write(b"x")
        await c.assert_open()

    run_streams(scenario)


def test_start_stream_needs_the_stack_s_reply() -> None:
    with pytest.raises(TypeError):
        start_stream(lambda status, body, headers: None)


# ---------------------------------------------------------------------- the end of a stream


@both_loops
@pytest.mark.parametrize("how", ["close", "half-close"])
def test_a_client_that_goes_away_ends_the_stream(how: str) -> None:
    async def scenario(h: Harness) -> None:
        app = app_of(h)
        c = await connect(h)
        await c.send(http("POST", "/watch", b"{}"))
        await c.stream_head()
        await until(lambda: len(app.streams) == 1, "the stream")
        (stream,) = app.streams
        assert stream.write(b"hello\n")
        assert await c.chunk() == b"hello\n"
        if how == "close":
            c.close()
        else:
            c.writer.write_eof()  # etcd3gw's cancel: shutdown, and nothing more read
        await until(lambda: app.closed == ["client"], "on_close")
        assert not stream.open and not stream.writable and not stream.write(b"x")
        await until(lambda: h.server.connections == 0, "the connection to go")
        assert app.closed == ["client"]  # once

    run_streams(scenario)


@both_loops
def test_server_close_ends_open_streams() -> None:
    async def main() -> None:
        app = StreamApp()
        server = HttpServer(app.router, token=TOKEN, limits=FAST)
        sock = listening_socket()
        await server.listen([sock])
        h = Harness(server, sock.getsockname()[1], app)
        c = await connect(h)
        await c.send(http("POST", "/watch", b"{}"))
        await c.stream_head()
        await until(lambda: len(app.streams) == 1, "the stream")
        server.close()
        assert app.closed == ["server"]
        assert not app.streams[0].write(b"x")
        await until(lambda: server.connections == 0, "the connection to go")
        c.close()

    run_loop(main())


@pytest.mark.parametrize("how", ["reset", "half-close"])
def test_a_stream_started_after_the_client_left_is_closed_at_once(how: str) -> None:
    async def scenario(h: Harness) -> None:
        app = app_of(h)
        c = await connect(h)
        await c.send(http("POST", "/watch-late", b"{}"))
        await until(lambda: len(app.held) == 1, "the request")
        if how == "reset":
            sock = c.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            await until(lambda: h.server.connections == 0, "the connection to go")
        else:
            c.writer.write_eof()
            (conn,) = h.server._connections
            await until(lambda: conn._eof, "the end of the client's side")
        _, reply = app.held.pop()
        stream = start_stream(reply, on_close=app.closed.append)
        assert not stream.open and not stream.write(b"x")
        stream.end()
        assert app.closed == []  # nothing to tell: the route learns it from `open`
        await until(lambda: h.server.connections == 0, "the connection to go")

    run_streams(scenario)


# ---------------------------------------------------------------------- bounds


def _fill(stream: ResponseStream, piece: bytes, most: int) -> int:
    """Write while the stream takes it (at most `most` bytes); the bytes written."""
    sent = 0
    while stream.writable and sent < most:
        assert stream.write(piece)
        sent += len(piece)
    return sent


@both_loops
def test_a_producer_that_waits_for_drain_delivers_everything_to_a_slow_reader() -> None:
    limits = Limits(max_unsent=64 << 10)
    piece = b"y" * 8191 + b"\n"
    total = 8 << 20  # far more than max_unsent and the sockets' buffers

    async def scenario(h: Harness) -> None:
        app = app_of(h)
        c = await connect(h, rcvbuf=4096)
        await c.send(http("POST", "/watch", b"{}"))
        await c.stream_head()
        await until(lambda: len(app.streams) == 1, "the stream")
        (stream,) = app.streams
        sent = [0]
        peak = [0]

        def pump() -> None:
            while stream.writable and sent[0] < total:
                stream.write(piece)
                sent[0] += len(piece)
                peak[0] = max(peak[0], stream.unsent())
            if sent[0] >= total:
                stream.end()

        stream.on_drain = pump
        pump()
        assert sent[0] < total and not stream.writable  # the client has not read yet
        got = 0
        while True:
            data = await c.chunk()
            if not data:
                break
            assert data == piece
            got += len(data)
        assert got == total and app.closed == []
        assert app.drains == 0  # on_drain was replaced by pump
        # never more unread than max_unsent plus one write (and its framing)
        assert peak[0] <= limits.max_unsent + len(piece) + 16, peak[0]
        assert h.server.refused["unread"] == 0

    run_streams(scenario, limits)


@both_loops
def test_a_write_when_the_client_does_not_read_cancels_the_stream() -> None:
    limits = Limits(max_unsent=32 << 10)
    piece = b"z" * 4095 + b"\n"

    async def scenario(h: Harness) -> None:
        app = app_of(h)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", h.port))
            await loop.sock_sendall(sock, http("POST", "/watch", b"{}"))
            await until(lambda: len(app.streams) == 1, "the stream")
            (stream,) = app.streams
            # Fill what the sockets hold and max_unsent: then the stream says wait.
            sent = 0
            for _ in range(10_000):
                sent += _fill(stream, piece, 64 << 20)
                if not stream.writable:
                    break
                await asyncio.sleep(0.001)  # let the kernel take what it takes
            assert not stream.writable and stream.open
            assert stream.unsent() <= limits.max_unsent + len(piece) + 16
            assert app.closed == []
            # A producer that writes anyway is cut off: nothing more is kept.
            assert not stream.write(piece)
            assert app.closed == ["unread"] and not stream.open
            assert h.server.refused["unread"] == 1
            await until(lambda: h.server.connections == 0, "the connection to go")
        finally:
            sock.close()

    run_streams(scenario, limits)


def test_a_stream_whose_client_reads_nothing_is_closed_after_the_idle_timeout() -> None:
    limits = Limits(max_unsent=16 << 10, idle_timeout=0.5, head_timeout=5.0)
    piece = b"w" * 4095 + b"\n"

    async def scenario(h: Harness) -> None:
        app = app_of(h)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", h.port))
            await loop.sock_sendall(sock, http("POST", "/watch", b"{}"))
            await until(lambda: len(app.streams) == 1, "the stream")
            (stream,) = app.streams

            def pump() -> None:  # a good producer: it only writes when told it may
                _fill(stream, piece, 64 << 20)

            stream.on_drain = pump
            for _ in range(10_000):
                pump()
                if not stream.writable:
                    break
                await asyncio.sleep(0.001)
            await until(lambda: app.closed == ["unread"], "the unread stream to be closed")
            assert h.server.refused["unread"] == 1
        finally:
            sock.close()

    run_streams(scenario, limits)


def test_an_idle_stream_is_not_an_idle_connection() -> None:
    limits = Limits(idle_timeout=0.3, head_timeout=5.0)

    async def scenario(h: Harness) -> None:
        app = app_of(h)
        c = await connect(h)
        await c.send(http("POST", "/watch", b"{}"))
        await c.stream_head()
        await until(lambda: len(app.streams) == 1, "the stream")
        (stream,) = app.streams
        # Several idle timeouts with nothing written: a watch may wait for hours.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 4 * limits.idle_timeout
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert stream.open and h.server.refused["idle"] == 0
        assert stream.write(b"still here\n")
        assert await c.chunk() == b"still here\n"

    run_streams(scenario, limits)


def test_a_streaming_connection_probes_its_peer_with_tcp_keepalive() -> None:
    """A silent stream (a watch on a key nobody writes) must still notice a peer
    that vanished without closing: its connection gets TCP keepalive."""
    import socket

    from kvcluster.server.http.connection import _keep_probing

    class Transport:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def get_extra_info(self, name: str) -> object:
            return self.sock if name == "socket" else None

    with socket.socket() as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        _keep_probing(Transport(sock))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
