"""The internal HTTP client (`kvcluster.server.http.client`) against real sockets.

Most servers here are raw asyncio stream servers whose every byte is the
test's (chunked answers, answers that end with the connection, servers that
close idle connections, servers that never answer); the streamed peer link
is tested against the package's own `HttpServer`. Each test runs its own
event loop; nothing sleeps a fixed time to assume something happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from loops import LOOP, both_loops, run_loop

from kvcluster.server.http import (
    ConnectionFailed,
    ConnectionPool,
    HttpConnection,
    HttpServer,
    Limits,
    Reply,
    Request,
    Route,
    open_stream,
)

READ_TIMEOUT = 10.0
SCENARIO_TIMEOUT = 60.0
TOKEN = "peer-token"

Handler = Callable[["Exchange"], Awaitable[None]]


@dataclass
class Exchange:
    """One accepted connection on a raw server, with what it read so far."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: RawServer

    async def read_request(self) -> tuple[str, dict[str, str], bytes] | None:
        """The next request (line, headers, body), or None at EOF."""
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.IncompleteReadError:
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await self.reader.readexactly(length) if length else b""
        self.server.requests.append((lines[0], headers, body))
        return lines[0], headers, body

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


@dataclass
class RawServer:
    handler: Handler
    port: int = 0
    connections: int = 0
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.handler(Exchange(reader, writer, self))
        writer.close()


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    raw = RawServer(handler)
    server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    try:
        yield raw
    finally:
        server.close()
        for writer in raw.writers:
            writer.close()
        await server.wait_closed()
        # every connection's handler has ended (its reads see the close)
        await asyncio.wait_for(asyncio.gather(*raw.tasks, return_exceptions=True), READ_TIMEOUT)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            await scenario()

    run_loop(main())


def ok(body: bytes = b'{"ok": true}', *, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{extra}\r\n"
    ).encode() + body


async def answer_each(ex: Exchange) -> None:
    """A keep-alive server: answers every request with its own request line and body."""
    while (request := await ex.read_request()) is not None:
        line, _, body = request
        await ex.write(ok(json.dumps({"line": line, "body": body.decode()}).encode()))


def refused_port() -> tuple[socket.socket, int]:
    """A port where nothing listens (bound, so nobody else takes it meanwhile)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


# ---------------------------------------------------------------------- responses


def test_content_length_response_and_the_request_on_the_wire() -> None:
    async def scenario() -> None:
        async with raw_server(answer_each) as raw:
            conn = HttpConnection("127.0.0.1", raw.port)
            try:
                response = await conn.request(
                    "PUT", "/v1/kv/a?x=1", b'{"value": 1}', {"X-Kvcluster-Sender": "n1"}
                )
                assert response.status == 200
                assert response.headers["content-type"] == "application/json"
                assert json.loads(response.body) == {
                    "line": "PUT /v1/kv/a?x=1 HTTP/1.1",
                    "body": '{"value": 1}',
                }
                response = await conn.request("GET", "/v1/kv/a")
                assert json.loads(response.body)["body"] == ""
            finally:
                conn.close()
            (_, put_headers, _), (_, get_headers, _) = raw.requests
            assert put_headers["host"] == f"127.0.0.1:{raw.port}"
            assert put_headers["content-length"] == "12"
            assert put_headers["x-kvcluster-sender"] == "n1"
            assert "content-length" not in get_headers  # a GET without a body has no framing

    run(scenario)


@both_loops
def test_chunked_response_with_extensions_and_trailers() -> None:
    async def chunked(ex: Exchange) -> None:
        while await ex.read_request() is not None:
            await ex.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Rep: a\r\nx-rep: b\r\n\r\n"
                b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nchunks\r\n0\r\nX-Trailer: t\r\n\r\n"
            )

    async def scenario() -> None:
        on_uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        assert on_uvloop == (LOOP["name"] == "uvloop")
        async with raw_server(chunked) as raw:
            conn = HttpConnection("127.0.0.1", raw.port)
            try:
                for _ in range(3):  # and the connection is reused after a chunked body
                    response = await conn.request("GET", "/")
                    assert (response.status, response.body) == (200, b"hello chunks")
                    assert response.headers["x-rep"] == "a, b"
                    assert "x-trailer" not in response.headers
            finally:
                conn.close()
            assert raw.connections == 1

    run(scenario)


def test_response_that_ends_with_the_connection_and_interim_responses() -> None:
    async def until_close(ex: Exchange) -> None:
        await ex.read_request()
        await ex.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await ex.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        ex.writer.close()

    async def scenario() -> None:
        async with raw_server(until_close) as raw:
            conn = HttpConnection("127.0.0.1", raw.port)
            try:
                response = await conn.request("GET", "/")
                assert (response.status, response.body) == (200, b"all of it")
                assert not conn.open
                response = await conn.request("GET", "/")  # a new connection
                assert response.body == b"all of it"
            finally:
                conn.close()
            assert raw.connections == 2

    run(scenario)


def test_bodyless_answers_keep_the_connection() -> None:
    async def no_content(ex: Exchange) -> None:
        while await ex.read_request() is not None:
            await ex.write(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")

    async def scenario() -> None:
        async with raw_server(no_content) as raw:
            conn = HttpConnection("127.0.0.1", raw.port)
            try:
                for _ in range(3):
                    response = await conn.request("POST", "/raft/messages", b"x")
                    assert (response.status, response.body) == (204, b"")
                    assert response.headers["x-a"] == "1"
            finally:
                conn.close()
            assert raw.connections == 1

    run(scenario)


def test_keep_alive_reuse_and_connection_close() -> None:
    async def closing_third(ex: Exchange) -> None:
        n = 0
        while await ex.read_request() is not None:
            n += 1
            await ex.write(ok(extra="Connection: close\r\n" if n == 3 else ""))
            if n == 3:
                return

    async def scenario() -> None:
        async with raw_server(closing_third) as raw:
            conn = HttpConnection("127.0.0.1", raw.port)
            try:
                for _ in range(5):
                    assert (await conn.request("GET", "/")).status == 200
            finally:
                conn.close()
            assert raw.connections == 2  # the third answer said close
            assert len(raw.requests) == 5

    run(scenario)


@both_loops
def test_server_closing_an_idle_connection_means_the_next_request_reconnects() -> None:
    async def one_then_close(ex: Exchange) -> None:
        await ex.read_request()
        await ex.write(ok())
        # then close the idle keep-alive connection, without saying so in the answer

    async def scenario() -> None:
        async with raw_server(one_then_close) as raw:
            conn = HttpConnection("127.0.0.1", raw.port)
            pool = ConnectionPool(f"http://127.0.0.1:{raw.port}")
            try:
                assert (await conn.request("GET", "/a")).status == 200
                await asyncio.wait_for(_closed(conn), READ_TIMEOUT)
                # The request goes on a new connection: it is neither lost nor an error.
                assert (await conn.request("POST", "/b", b"x")).status == 200
                assert raw.connections == 2
                assert (await pool.request("GET", "/c")).status == 200
                assert pool.idle == 1
                await until(lambda: raw.connections == 3 and len(raw.writers) == 3, "3 accepted")
                await asyncio.sleep(0)
                await until(lambda: not pool._idle[0].open, "the pool's idle connection to close")
                assert (await pool.request("GET", "/d")).status == 200
            finally:
                conn.close()
                pool.close()
            assert [r[0] for r in raw.requests] == [
                "GET /a HTTP/1.1",
                "POST /b HTTP/1.1",
                "GET /c HTTP/1.1",
                "GET /d HTTP/1.1",
            ]  # each request delivered exactly once

    run(scenario)


async def _closed(conn: HttpConnection) -> None:
    while conn.open:
        await asyncio.sleep(0.005)


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_TIMEOUT
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


# ---------------------------------------------------------------------- failures


@both_loops
def test_connect_refused_is_not_sent() -> None:
    async def scenario() -> None:
        sock, port = refused_port()
        try:
            conn = HttpConnection("127.0.0.1", port)
            with pytest.raises(ConnectionFailed) as failed:
                await conn.request("PUT", "/x", b"body")
            assert failed.value.sent is False
            pool = ConnectionPool(f"http://127.0.0.1:{port}")
            with pytest.raises(ConnectionFailed) as failed:
                await pool.request("GET", "/x")
            assert failed.value.sent is False and pool.idle == 0
            with pytest.raises(ConnectionFailed) as failed:
                await open_stream("127.0.0.1", port, "/raft/stream", {})
            assert failed.value.sent is False
        finally:
            sock.close()

    run(scenario)


@both_loops
def test_timeout_is_sent_and_closes_the_connection() -> None:
    async def silent(ex: Exchange) -> None:
        await ex.read_request()
        await ex.reader.read()  # never answers

    async def scenario() -> None:
        async with raw_server(silent) as raw:
            conn = HttpConnection("127.0.0.1", raw.port)
            with pytest.raises(ConnectionFailed) as failed:
                await conn.request("PUT", "/x", b"body", timeout=0.2)
            assert failed.value.sent is True and "0.2" in str(failed.value)
            assert not conn.open
            assert len(raw.requests) == 1

    run(scenario)


@both_loops
def test_each_request_on_a_connection_keeps_its_own_deadline() -> None:
    # A connection has one timer, armed for the request in flight: it must move
    # when a request has a later deadline than the last, and come sooner when a
    # request has an earlier one, idle or not in between.
    async def scripted(ex: Exchange) -> None:
        while (request := await ex.read_request()) is not None:
            line = request[0]
            if line.startswith("GET /late"):
                await asyncio.sleep(0.3)  # past the deadline of the request before it
            if line.startswith("GET /never"):
                await ex.reader.read()
                return
            await ex.write(ok())

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with raw_server(scripted) as raw:
            conn = HttpConnection("127.0.0.1", raw.port)
            assert (await conn.request("GET", "/soon", timeout=0.1)).status == 200
            assert (await conn.request("GET", "/late", timeout=40.0)).status == 200
            t0 = loop.time()
            with pytest.raises(ConnectionFailed) as failed:
                await conn.request("GET", "/never", timeout=0.2)
            assert failed.value.sent is True and "0.2" in str(failed.value)
            assert loop.time() - t0 < 20.0  # its own 0.2 s, not the 40 s before it
            assert not conn.open

            conn = HttpConnection("127.0.0.1", raw.port)
            assert (await conn.request("GET", "/soon", timeout=0.05)).status == 200
            idle_until = loop.time() + 0.2  # the first deadline passes while idle
            await until(lambda: loop.time() > idle_until, "the idle time")
            assert conn.open
            assert (await conn.request("GET", "/soon", timeout=5.0)).status == 200
            with pytest.raises(ConnectionFailed) as failed:
                await conn.request("GET", "/never", timeout=0.2)
            assert failed.value.sent is True and not conn.open

    run(scenario)


def test_connection_lost_before_the_answer_is_sent() -> None:
    async def hang_up(ex: Exchange) -> None:
        await ex.read_request()
        await ex.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nonly")

    async def scenario() -> None:
        async with raw_server(hang_up) as raw:
            conn = HttpConnection("127.0.0.1", raw.port)
            with pytest.raises(ConnectionFailed) as failed:
                await conn.request("GET", "/x")
            assert failed.value.sent is True
            assert not conn.open

    run(scenario)


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"h" * 200_000 + b"\r\n\r\n", "head"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"b" * 5000, "body"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         + (b"7d0\r\n" + b"c" * 2000 + b"\r\n") * 3 + b"0\r\n\r\n", "body"),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"u" * 5000, "body"),
        (b"SMTP ready\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "malformed"),
    ],
)  # fmt: skip
def test_bad_or_oversized_answers_fail(answer: bytes, what: str) -> None:
    async def bad(ex: Exchange) -> None:
        await ex.read_request()
        await ex.write(answer)
        await ex.reader.read()

    async def scenario() -> None:
        async with raw_server(bad) as raw:
            conn = HttpConnection("127.0.0.1", raw.port)
            with pytest.raises(ConnectionFailed) as failed:
                await conn.request("GET", "/x", max_body=4096)
            assert failed.value.sent is True
            if what != "malformed":
                assert what in str(failed.value)
            assert not conn.open

    run(scenario)


def test_cancelled_request_closes_its_connection() -> None:
    async def silent(ex: Exchange) -> None:
        await ex.read_request()
        await ex.reader.read()

    async def scenario() -> None:
        async with raw_server(silent) as raw:
            conn = HttpConnection("127.0.0.1", raw.port)
            task = asyncio.ensure_future(conn.request("GET", "/x"))
            await until(lambda: len(raw.requests) == 1, "the request")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not conn.open

    run(scenario)


def test_header_injection_is_refused() -> None:
    async def scenario() -> None:
        conn = HttpConnection("127.0.0.1", 9)
        with pytest.raises(ValueError):
            await conn.request("GET", "/x", headers={"X-A": "b\r\nX-Evil: 1"})
        with pytest.raises(ValueError):
            await conn.request("GET", "/x y")

    run(scenario)


# ---------------------------------------------------------------------- addresses and pools


def test_ip_literals_connect_without_the_resolver_and_names_use_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On asyncio's loop, a name is resolved in the loop's executor (a thread)
    and an IP literal never is. (uvloop answers numeric hosts itself, without
    its thread pool, so there is nothing to observe there: this test names its
    loop rather than following KVCLUSTER_TEST_LOOP.)"""

    async def scenario() -> None:
        async with raw_server(answer_each) as raw:
            loop = asyncio.get_running_loop()
            threads: list[Any] = []
            real = loop.run_in_executor

            def counting(executor: Any, func: Any, *args: Any) -> Any:
                threads.append(args[:1])  # asyncio resolves names in its executor
                return real(executor, func, *args)

            monkeypatch.setattr(loop, "run_in_executor", counting)
            conn = HttpConnection("127.0.0.1", raw.port)
            named = HttpConnection("localhost", raw.port)
            try:
                assert (await conn.request("GET", "/")).status == 200
                assert threads == []
                # localhost may resolve to ::1 first, where nothing listens: the
                # request may fail, but the name went through the resolver.
                with contextlib.suppress(ConnectionFailed):
                    assert (await named.request("GET", "/")).status == 200
                assert threads[:1] == [("localhost",)]
            finally:
                conn.close()
                named.close()

    async def main() -> None:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            await scenario()

    asyncio.run(main())


def test_pool_keeps_idle_connections_up_to_max_idle() -> None:
    gate = asyncio.Event()

    async def gated(ex: Exchange) -> None:
        while await ex.read_request() is not None:
            await gate.wait()
            await ex.write(ok())

    async def scenario() -> None:
        async with raw_server(gated) as raw:
            pool = ConnectionPool(f"http://127.0.0.1:{raw.port}", max_idle=2)
            try:
                tasks = [asyncio.ensure_future(pool.request("GET", f"/{i}")) for i in range(4)]
                await until(lambda: len(raw.requests) == 4, "four concurrent requests")
                assert raw.connections == 4
                gate.set()
                assert [r.status for r in await asyncio.gather(*tasks)] == [200] * 4
                assert pool.idle == 2
                for _ in range(3):  # sequential requests reuse one idle connection
                    assert (await pool.request("GET", "/again")).status == 200
                assert raw.connections == 4
            finally:
                pool.close()
            assert pool.idle == 0
            with pytest.raises(ValueError):
                ConnectionPool("https://127.0.0.1:1")

    run(scenario)


# ---------------------------------------------------------------------- streams


@dataclass
class StreamApp:
    lines: list[bytes] = field(default_factory=list)
    ended: int = 0

    def router(self, method: str, path: str) -> Route | None:
        if path == "/raft/stream":
            return Route(self.end, token=True, max_body=1 << 20, lines=self.line)
        if path == "/echo":
            return Route(self.echo)
        return None

    def line(self, request: Request, line: bytes) -> None:
        self.lines.append(line)

    def end(self, request: Request, reply: Reply) -> None:
        self.ended += 1
        reply(200, json.dumps({"lines": len(self.lines)}).encode(), ())

    def echo(self, request: Request, reply: Reply) -> None:
        reply(200, json.dumps({"body": request.body.decode(), "peer": request.peer}).encode(), ())


@contextlib.asynccontextmanager
async def http_server() -> AsyncIterator[tuple[HttpServer, StreamApp, int]]:
    app = StreamApp()
    server = HttpServer(app.router, token=TOKEN, limits=Limits(idle_timeout=30.0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    await server.listen([sock])
    try:
        yield server, app, sock.getsockname()[1]
    finally:
        server.close()
    await until(lambda: server.connections == 0, "the server's connections to close")


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@both_loops
def test_stream_delivers_chunks_and_finish_gets_the_answer() -> None:
    async def scenario() -> None:
        async with http_server() as (server, app, port):
            stream = await open_stream("127.0.0.1", port, "/raft/stream", AUTH, timeout=5.0)
            try:
                for i in range(100):
                    stream.send(b'{"batch": %d}\n' % i)  # written now, no await
                stream.send(b"")  # nothing: an empty chunk would end the body
                stream.send(b"two\nlines\n")
                await until(lambda: len(app.lines) == 102, "the lines")
                assert app.lines[:2] == [b'{"batch": 0}', b'{"batch": 1}']
                assert app.lines[-2:] == [b"two", b"lines"]
                assert stream.unsent >= 0 and not stream.closed.done()
                assert server.peers == 1
                stream.finish()
                response = await asyncio.wait_for(stream.closed, READ_TIMEOUT)
                assert response is not None and response.status == 200
                assert json.loads(response.body) == {"lines": 102}
                with pytest.raises(ConnectionFailed) as failed:
                    stream.send(b"late\n")
                assert failed.value.sent is False
            finally:
                stream.close()
            # the same client, for a plain request with a body, on the same server
            conn = HttpConnection("127.0.0.1", port)
            try:
                response = await conn.request("POST", "/echo", b"hi", AUTH)
                assert json.loads(response.body) == {"body": "hi", "peer": True}
            finally:
                conn.close()

    run(scenario)


@both_loops
def test_stream_notices_the_server_ending_it() -> None:
    async def scenario() -> None:
        async with http_server() as (server, app, port):
            # refused: the 401 ends the stream at once
            stream = await open_stream(
                "127.0.0.1", port, "/raft/stream", {"Authorization": "Bearer no"}
            )
            response = await asyncio.wait_for(stream.closed, READ_TIMEOUT)
            assert response is not None and response.status == 401
            assert json.loads(response.body)["error"] == "unauthorized"
            # an over-long line: the server answers 400 and closes
            stream = await open_stream("127.0.0.1", port, "/raft/stream", AUTH)
            stream.send(b"x" * ((1 << 20) + 10))
            response = await asyncio.wait_for(stream.closed, READ_TIMEOUT)
            assert response is not None and response.status == 400
            # the server goes away without a word: None
            stream = await open_stream("127.0.0.1", port, "/raft/stream", AUTH)
            stream.send(b"one\n")
            await until(lambda: app.lines == [b"one"], "the line")
            server.close()
            assert await asyncio.wait_for(stream.closed, READ_TIMEOUT) is None
            with pytest.raises(ConnectionFailed):
                stream.send(b"two\n")
            stream.close()

    run(scenario)


def test_stream_close_from_our_side() -> None:
    async def scenario() -> None:
        async with http_server() as (server, app, port):
            stream = await open_stream("127.0.0.1", port, "/raft/stream", AUTH)
            stream.send(b"a\n")
            await until(lambda: app.lines == [b"a"], "the line")
            stream.close()
            assert stream.closed.done() and stream.closed.result() is None
            assert stream.unsent == 0
            await until(lambda: server.connections == 0, "the server to see the close")
            assert app.ended == 0  # the body did not end: the handler is not called

    run(scenario)
