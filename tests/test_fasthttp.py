"""The lean HTTP/1.1 server (`kvcluster.server.fasthttp`), in-process and on a real socket.

An `HttpServer` on 127.0.0.1 (port 0) with a small router of echoing fast
routes, and a tiny tornado Application behind the bridge (a plain handler, a
streamed one, one that raises its body limit in prepare, one that raises, a
JSON 404). Clients are raw asyncio streams, so every byte on the wire is ours:
keep-alive, pipelining, bodies split byte by byte, chunked bodies, 100-continue,
connection closing, bad framing, body limits, errors, and stopping.

No node processes and no pytest-asyncio: each test drives its own event loop
with asyncio.run. Reads wait at most READ_TIMEOUT; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import tornado.web

from kvcluster.server import fasthttp
from kvcluster.server.fasthttp import FastRoute, HttpServer, Request, Response

READ_TIMEOUT = 10.0  # one read; generous for a busy 2-core machine
SCENARIO_TIMEOUT = 60.0  # one whole test
SERVER_MAX_BODY = 1000  # the bridged (tornado) routes' body limit
FAST_MAX_BODY = 100  # the fast routes' body limit...
FAST_DRAIN = 1000  # ...and how much over it they read and discard
RAISED_MAX_BODY = 100_000  # what /big-stream raises its limit to in prepare


# ---------------------------------------------------------------------- the server side


@dataclass
class Gate:
    """Holds /fast-slow until released; counts who is waiting."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0


@dataclass
class Recorder:
    """What the streamed tornado handlers saw, for the test to look at."""

    prepared: int = 0
    chunks: list[bytes] = field(default_factory=list)
    finished: int = 0
    closed: int = 0


def echo(request: Request, handler: str) -> Response:
    body = {
        "handler": handler,
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "version": request.version,
        "body": request.body.decode("latin-1"),
    }
    return Response(200, json.dumps(body).encode(), [("X-Handler", handler)])


def too_large(size: int) -> Response:
    return Response(413, json.dumps({"error": "too_large_here", "size": size}).encode())


class TestRouter:
    """/fast* are answered by fasthttp itself; anything else goes to tornado."""

    __test__ = False  # not a pytest class

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        routes: dict[str, Callable[[Request], Response | Awaitable[Response]]] = {
            "/fast": self.sync,
            "/fast-async": self.async_,
            "/fast-slow": self.slow,
            "/fast-raise": self.raise_sync,
            "/fast-raise-async": self.raise_async,
        }
        self.routes = {
            path: FastRoute(handler, FAST_MAX_BODY, FAST_DRAIN, too_large)
            for path, handler in routes.items()
        }

    def __call__(self, method: str, path: str) -> FastRoute | None:
        return self.routes.get(path)

    def sync(self, request: Request) -> Response:
        return echo(request, "fast")

    async def async_(self, request: Request) -> Response:
        await asyncio.sleep(0)
        return echo(request, "fast-async")

    async def slow(self, request: Request) -> Response:
        self.gate.waiting += 1
        await self.gate.event.wait()
        return echo(request, "fast-slow")

    def raise_sync(self, request: Request) -> Response:
        raise RuntimeError("sync handler failure (on purpose)")

    async def raise_async(self, request: Request) -> Response:
        await asyncio.sleep(0)
        raise RuntimeError("async handler failure (on purpose)")


class JsonHandler(tornado.web.RequestHandler):
    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(json.dumps({"error": f"status_{status_code}", "message": self._reason}))

    def reply(self, handler: str, body: str) -> None:
        self.set_header("X-Handler", handler)
        r = self.request
        self.finish(
            json.dumps(
                {
                    "handler": handler,
                    "method": r.method,
                    "path": r.path,
                    "query": r.query,
                    "version": r.version,
                    "body": body,
                }
            )
        )


class PlainHandler(JsonHandler):
    def get(self) -> None:
        self.reply("plain", self.request.body.decode("latin-1"))

    post = put = delete = get


@tornado.web.stream_request_body
class StreamHandler(JsonHandler):
    def initialize(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def prepare(self) -> None:
        self.chunks: list[bytes] = []
        self.recorder.prepared += 1

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.recorder.chunks.append(chunk)

    def post(self) -> None:
        self.recorder.finished += 1
        self.reply("stream", b"".join(self.chunks).decode("latin-1"))

    put = post

    def on_connection_close(self) -> None:
        self.recorder.closed += 1
        super().on_connection_close()


@tornado.web.stream_request_body
class AsyncStreamHandler(StreamHandler):
    """data_received is a coroutine: the bridge must wait for each before the next."""

    async def data_received(self, chunk: bytes) -> None:  # type: ignore[override]
        for _ in range(3):
            await asyncio.sleep(0)
        self.chunks.append(chunk)
        self.recorder.chunks.append(chunk)


@tornado.web.stream_request_body
class BigStreamHandler(StreamHandler):
    """Raises its body limit in prepare, as kvcluster's RaftHandler does."""

    def prepare(self) -> None:
        super().prepare()
        connection = self.request.connection
        assert connection is not None
        connection.set_max_body_size(RAISED_MAX_BODY)  # type: ignore[attr-defined]


@tornado.web.stream_request_body
class RejectHandler(StreamHandler):
    """Answers in prepare, before reading the body (as RaftStreamHandler does a 401)."""

    def prepare(self) -> None:
        super().prepare()
        self.set_status(401)
        self.finish(json.dumps({"error": "unauthorized", "message": "no token"}))


class FlushHandler(JsonHandler):
    """A response written in pieces, without a Content-Length: framed by the bridge."""

    async def get(self) -> None:
        self.write('{"pieces": ["one"')
        await self.flush()
        self.write(', "two"')
        await self.flush()
        self.finish("]}")


class EmptyHandler(JsonHandler):
    def get(self) -> None:
        self.set_status(204)
        self.finish()


class RaiseHandler(JsonHandler):
    def get(self) -> None:
        raise RuntimeError("tornado handler failure (on purpose)")


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        self.set_status(404)
        self.finish(json.dumps({"error": "not_found", "message": f"no {self.request.path}"}))


def make_app(recorder: Recorder) -> tornado.web.Application:
    args = {"recorder": recorder}
    return tornado.web.Application(
        [
            (r"/plain", PlainHandler),
            (r"/stream", StreamHandler, args),
            (r"/async-stream", AsyncStreamHandler, args),
            (r"/big-stream", BigStreamHandler, args),
            (r"/reject", RejectHandler, args),
            (r"/flush", FlushHandler),
            (r"/empty", EmptyHandler),
            (r"/raise", RaiseHandler),
        ],
        default_handler_class=NotFoundHandler,
    )


@dataclass
class Harness:
    server: HttpServer
    port: int
    gate: Gate
    recorder: Recorder

    async def connect(self) -> Client:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), READ_TIMEOUT
        )
        return Client(reader, writer)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a condition the test cannot await directly (polls the loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_TIMEOUT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def others() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


@contextlib.asynccontextmanager
async def serving(idle_timeout: float = 3600.0) -> AsyncIterator[Harness]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    gate, recorder = Gate(), Recorder()
    server = HttpServer(
        TestRouter(gate), make_app(recorder), max_body=SERVER_MAX_BODY, idle_timeout=idle_timeout
    )
    await server.listen([sock])
    harness = Harness(server, sock.getsockname()[1], gate, recorder)
    try:
        yield harness
    except BaseException:
        server.stop()
        gate.event.set()
        raise
    server.stop()
    gate.event.set()
    # HttpServer.stop closed every connection: nothing of the server is left running.
    await until(lambda: not server.connections, "the connections to close")
    await until(lambda: not others(), "the server's tasks to end")


def run(scenario: Callable[[Harness], Awaitable[None]], *, idle_timeout: float = 3600.0) -> None:
    async def main() -> None:
        async with serving(idle_timeout) as harness:
            async with asyncio.timeout(SCENARIO_TIMEOUT):  # no task of its own
                await scenario(harness)

    asyncio.run(main())


# ---------------------------------------------------------------------- the client side


@dataclass
class Reply:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), READ_TIMEOUT)

    async def send_bytewise(self, data: bytes) -> None:
        for i in range(len(data)):
            await self.send(data[i : i + 1])

    async def reply(self) -> Reply:
        """The next response on the wire, a 1xx included (without a body)."""
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"no response within {READ_TIMEOUT} s") from None
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, status, reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        code = int(status)
        if code < 200 or code in (204, 304):
            body = b""
        elif "content-length" in headers:
            n = int(headers["content-length"])
            body = await asyncio.wait_for(self.reader.readexactly(n), READ_TIMEOUT)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        else:
            body = await asyncio.wait_for(self.reader.read(), READ_TIMEOUT)
        return Reply(code, reason, headers, body)

    async def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), READ_TIMEOUT)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while await asyncio.wait_for(self.reader.readuntil(b"\r\n"), READ_TIMEOUT) != (
                    b"\r\n"
                ):
                    pass
                return b"".join(parts)
            data = await asyncio.wait_for(self.reader.readexactly(size + 2), READ_TIMEOUT)
            parts.append(data[:-2])

    async def request(self, data: bytes) -> Reply:
        await self.send(data)
        return await self.reply()

    async def assert_closed(self) -> None:
        """The server closed the connection, with nothing more to read."""
        rest = await asyncio.wait_for(self.reader.read(), READ_TIMEOUT)
        assert rest == b"", f"more bytes after the last answer: {rest[:200]!r}"

    def close(self) -> None:
        self.writer.close()


def http(
    method: str,
    target: str,
    body: bytes = b"",
    *,
    headers: tuple[str, ...] = (),
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {target} {version}", "Host: test", *headers]
    framed = any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers)
    if not framed and (body or method in ("PUT", "POST")):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(
    method: str, target: str, chunks: list[bytes], *, headers: tuple[str, ...] = ()
) -> bytes:
    """A chunked request, with a chunk extension on every chunk and two trailers."""
    head = http(method, target, headers=("Transfer-Encoding: chunked", *headers))
    body = b"".join(
        b'%x;ext=%d;quoted="a b"\r\n%b\r\n' % (len(c), i, c) for i, c in enumerate(chunks)
    )
    return head + body + b"0;last=yes\r\nX-Trailer: one\r\nX-Other: two\r\n\r\n"


def assert_echo(reply: Reply, handler: str, method: str, path: str, body: bytes = b"") -> None:
    assert reply.status == 200, (reply.status, reply.body[:300])
    got = reply.json()
    assert got["handler"] == handler, got
    assert got["method"] == method, got
    assert got["path"] == path, got
    assert got["body"].encode("latin-1") == body, got


def assert_json_error(reply: Reply, status: int, close: bool) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers.get("content-type") == "application/json", reply.headers
    got = reply.json()
    assert isinstance(got.get("error"), str) and got["error"], got
    assert isinstance(got.get("message"), str) and got["message"], got
    if close:
        assert reply.headers.get("connection", "").lower() == "close", reply.headers
    return got


# ---------------------------------------------------------------------- keep-alive


def test_keep_alive_interleaves_fast_sync_async_and_bridged_routes() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        for _ in range(3):
            assert_echo(await c.request(http("GET", "/fast?a=1")), "fast", "GET", "/fast")
            assert_echo(await c.request(http("GET", "/plain")), "plain", "GET", "/plain")
            r = await c.request(http("PUT", "/fast-async", b'{"v":1}'))
            assert_echo(r, "fast-async", "PUT", "/fast-async", b'{"v":1}')
            r = await c.request(http("POST", "/plain", b"posted"))
            assert_echo(r, "plain", "POST", "/plain", b"posted")
            r = await c.request(http("DELETE", "/fast", b"x"))
            assert_echo(r, "fast", "DELETE", "/fast", b"x")
            r = await c.request(http("PUT", "/stream", b"streamed"))
            assert_echo(r, "stream", "PUT", "/stream", b"streamed")
            r = await c.request(http("GET", "/nowhere"))
            assert r.status == 404 and r.json()["error"] == "not_found", r
            assert "connection" not in r.headers
        assert h.recorder.finished == 3
        assert len(h.server.connections) == 1
        c.close()

    run(scenario)


def test_query_and_version_reach_the_handlers() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        got = (await c.request(http("GET", "/fast?x=1&y=%20"))).json()
        assert (got["query"], got["version"]) == ("x=1&y=%20", "HTTP/1.1")
        got = (await c.request(http("GET", "/plain?x=1&y=%20"))).json()
        assert (got["query"], got["version"]) == ("x=1&y=%20", "HTTP/1.1")
        c.close()

    run(scenario)


# ---------------------------------------------------------------------- pipelining


def test_pipelined_mixed_requests_are_answered_in_order() -> None:
    kinds = [
        ("GET", "/fast", "fast", b""),
        ("PUT", "/fast-async", "fast-async", b"async body"),
        ("POST", "/plain", "plain", b"plain body"),
        ("POST", "/stream", "stream", b"stream body"),
        ("DELETE", "/fast", "fast", b""),
        ("GET", "/plain", "plain", b""),
    ]

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        expected = []
        data = bytearray()
        for i in range(120):
            method, path, handler, body = kinds[i % len(kinds)]
            body = body + b" %d" % i if body else b""
            data += http(method, f"{path}?i={i}", body)
            expected.append((method, path, handler, body, f"i={i}"))
        await c.send(bytes(data))
        for method, path, handler, body, query in expected:
            reply = await c.reply()
            assert_echo(reply, handler, method, path, body)
            assert reply.json()["query"] == query
        assert_echo(await c.request(http("GET", "/fast")), "fast", "GET", "/fast")
        c.close()

    run(scenario)


@pytest.mark.parametrize("path", ["/fast", "/fast-async"])
def test_two_thousand_pipelined_gets_in_one_send(path: str) -> None:
    n = 2000

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(
            b"".join(b"GET %b?i=%d HTTP/1.1\r\n\r\n" % (path.encode(), i) for i in range(n))
        )
        for i in range(n):
            reply = await c.reply()
            assert reply.status == 200
            assert reply.json()["query"] == f"i={i}"
        c.close()

    run(scenario)


def test_pipelined_backlog_pauses_reading_and_resumes() -> None:
    """A slow answer with megabytes of requests queued behind it: the server
    stops reading past its buffer limit, then serves them all in order."""
    pad = "p" * (32 << 10)
    count = fasthttp._PAUSE_AT // len(pad) + 40

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(http("GET", "/fast-slow"))
        await until(lambda: h.gate.waiting == 1, "the slow handler to start")
        data = b"".join(
            http("GET", f"/fast?i={i}", headers=(f"X-Pad: {pad}",)) for i in range(count)
        )
        sender = asyncio.ensure_future(c.send(data))
        (conn,) = h.server.connections
        assert conn.transport is not None
        transport = conn.transport
        await until(lambda: not transport.is_reading(), "the server to pause reading")
        h.gate.event.set()
        assert_echo(await c.reply(), "fast-slow", "GET", "/fast-slow")
        for i in range(count):
            reply = await c.reply()
            assert_echo(reply, "fast", "GET", "/fast")
            assert reply.json()["query"] == f"i={i}"
        await sender
        assert transport.is_reading()
        c.close()

    run(scenario)


def test_stray_crlf_before_a_pipelined_request_is_ignored() -> None:
    """RFC 9112 2.2 (and fasthttp's own comment): a server SHOULD ignore an empty
    line before a request-line. Some clients send CRLF after a POST body."""

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        # arriving alone (the server has nothing else buffered)
        assert_echo(await c.request(http("PUT", "/fast", b"one")), "fast", "PUT", "/fast", b"one")
        await c.send(b"\r\n")
        assert_echo(await c.request(http("GET", "/fast")), "fast", "GET", "/fast")
        # arriving together with the next request
        await c.send(http("PUT", "/fast", b"two") + b"\r\n" + http("GET", "/fast?after"))
        assert_echo(await c.reply(), "fast", "PUT", "/fast", b"two")
        reply = await c.reply()
        assert reply.status == 200, (reply.status, reply.body)
        c.close()

    run(scenario)


# ---------------------------------------------------------------------- bodies


@pytest.mark.parametrize(
    ("path", "handler"),
    [("/fast", "fast"), ("/fast-async", "fast-async"), ("/plain", "plain"), ("/stream", "stream")],
)
def test_content_length_request_sent_byte_by_byte(path: str, handler: str) -> None:
    body = b'{"key": "value", "n": 12345}'

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send_bytewise(http("PUT", path, body))
        assert_echo(await c.reply(), handler, "PUT", path, body)
        # the connection is still good, and the next body too
        await c.send_bytewise(http("PUT", path, body[::-1]))
        assert_echo(await c.reply(), handler, "PUT", path, body[::-1])
        c.close()

    run(scenario)


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-send", "byte-by-byte"])
@pytest.mark.parametrize(
    ("path", "handler"),
    [
        ("/fast", "fast"),
        ("/fast-async", "fast-async"),
        ("/plain", "plain"),
        ("/stream", "stream"),
        ("/async-stream", "stream"),
    ],
)
def test_chunked_request_body(path: str, handler: str, bytewise: bool) -> None:
    chunks = [b"hello", b", ", b"chunked world", b"x" * 17, b"!"]

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        data = chunked("PUT", path, chunks)
        for _ in range(2):
            await (c.send_bytewise(data) if bytewise else c.send(data))
            assert_echo(await c.reply(), handler, "PUT", path, b"".join(chunks))
        if handler == "stream":
            assert b"".join(h.recorder.chunks) == b"".join(chunks) * 2
        c.close()

    run(scenario)


@pytest.mark.parametrize("path", ["/stream", "/async-stream"])
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_streamed_handler_gets_each_piece_before_the_end(path: str, framing: str) -> None:
    pieces = [b"first piece;", b"second piece;", b"third piece"]

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        rec = h.recorder
        if framing == "chunked":
            await c.send(http("POST", path, headers=("Transfer-Encoding: chunked",)))
        else:
            total = sum(map(len, pieces))
            await c.send(http("POST", path, headers=(f"Content-Length: {total}",)))
        await until(lambda: rec.prepared == 1, "prepare to run")
        for i, piece in enumerate(pieces):
            await c.send(b"%x\r\n%b\r\n" % (len(piece), piece) if framing == "chunked" else piece)
            if i < len(pieces) - 1:
                so_far = b"".join(pieces[: i + 1])

                def arrived(so_far: bytes = so_far) -> bool:
                    return b"".join(rec.chunks) == so_far

                await until(arrived, f"piece {i} to reach the handler")
                assert rec.finished == 0
        if framing == "chunked":
            await c.send(b"0\r\n\r\n")
        assert_echo(await c.reply(), "stream", "POST", path, b"".join(pieces))
        assert rec.finished == 1 and rec.closed == 0
        c.close()

    run(scenario)


def test_async_streamed_handler_gets_many_chunks_in_order() -> None:
    chunks = [b"<%03d>" % i for i in range(200)]

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(chunked("POST", "/async-stream", chunks))
        assert_echo(await c.reply(), "stream", "POST", "/async-stream", b"".join(chunks))
        assert h.recorder.chunks == chunks
        c.close()

    run(scenario)


@pytest.mark.parametrize(
    ("path", "handler"), [("/fast", "fast"), ("/plain", "plain"), ("/stream", "stream")]
)
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_expect_100_continue(path: str, handler: str, framing: str) -> None:
    body = b"sent after 100 Continue"

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        if framing == "chunked":
            head = http(
                "PUT",
                path,
                headers=("Expect: 100-continue", "Transfer-Encoding: chunked"),
            )
            rest = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        else:
            head = http(
                "PUT",
                path,
                headers=("Expect: 100-continue", f"Content-Length: {len(body)}"),
            )
            rest = body
        interim = await c.request(head)
        assert (interim.status, interim.reason, interim.body) == (100, "Continue", b"")
        await c.send(rest)
        assert_echo(await c.reply(), handler, "PUT", path, body)
        assert_echo(await c.request(http("GET", "/fast")), "fast", "GET", "/fast")
        c.close()

    run(scenario)


def test_expect_100_continue_with_a_body_over_the_drain_limit_gets_no_100() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        size = FAST_DRAIN + 1
        head = http(
            "PUT",
            "/fast",
            headers=("Expect: 100-continue", f"Content-Length: {size}"),
        )
        reply = await c.request(head)
        assert reply.status == 413 and reply.json() == {"error": "too_large_here", "size": size}
        assert reply.headers["connection"] == "close"
        await c.assert_closed()

    run(scenario)


def test_bridged_responses_in_pieces_and_without_a_body_keep_the_connection() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        for _ in range(2):
            reply = await c.request(http("GET", "/flush"))
            assert reply.status == 200
            assert reply.headers.get("transfer-encoding") == "chunked"
            assert reply.json() == {"pieces": ["one", "two"]}
            reply = await c.request(http("GET", "/empty"))
            assert reply.status == 204 and "transfer-encoding" not in reply.headers
            assert_echo(await c.request(http("GET", "/fast")), "fast", "GET", "/fast")
        c.close()

    run(scenario)


def test_bridged_response_in_pieces_to_http_1_0_is_not_chunked() -> None:
    """RFC 9112 6.1: a server MUST NOT send Transfer-Encoding in a response to
    an HTTP/1.0 request; tornado's HTTP1Connection delimits it by closing."""

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(http("GET", "/flush", version="HTTP/1.0"))
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        rest = await asyncio.wait_for(c.reader.read(), READ_TIMEOUT)
        assert b"transfer-encoding" not in head.lower(), head
        assert json.loads(rest) == {"pieces": ["one", "two"]}

    run(scenario)


def test_bridged_answer_before_the_body_then_close() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(http("POST", "/reject", headers=("Content-Length: 100",)) + b"not all")
        reply = await c.reply()
        assert reply.status == 401 and reply.json()["error"] == "unauthorized"
        # the rest of the body cannot be told from a next request: the server closes
        await c.assert_closed()
        assert h.recorder.chunks == [] and h.recorder.finished == 0

    run(scenario)


# ---------------------------------------------------------------------- closing


@pytest.mark.parametrize(
    ("path", "handler"), [("/fast", "fast"), ("/fast-async", "fast-async"), ("/plain", "plain")]
)
def test_http_1_0_without_keep_alive_closes_after_the_answer(path: str, handler: str) -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        reply = await c.request(http("GET", path, version="HTTP/1.0"))
        assert_echo(reply, handler, "GET", path)
        assert reply.json()["version"] == "HTTP/1.0"
        assert reply.headers["connection"] == "close"
        await c.assert_closed()

    run(scenario)


@pytest.mark.parametrize(("path", "handler"), [("/fast", "fast"), ("/plain", "plain")])
def test_http_1_0_with_keep_alive_keeps_the_connection(path: str, handler: str) -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        for _ in range(3):
            req = http("GET", path, version="HTTP/1.0", headers=("Connection: keep-alive",))
            reply = await c.request(req)
            assert_echo(reply, handler, "GET", path)
            assert reply.headers.get("connection", "").lower() != "close"
        c.close()

    run(scenario)


@pytest.mark.parametrize(
    ("path", "handler"), [("/fast", "fast"), ("/fast-async", "fast-async"), ("/plain", "plain")]
)
def test_connection_close_on_http_1_1_closes_after_the_answer(path: str, handler: str) -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        assert_echo(await c.request(http("GET", path)), handler, "GET", path)
        reply = await c.request(http("PUT", path, b"last", headers=("Connection: close",)))
        assert_echo(reply, handler, "PUT", path, b"last")
        assert reply.headers["connection"] == "close"
        await c.assert_closed()

    run(scenario)


def test_requests_pipelined_after_connection_close_are_not_answered() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(http("GET", "/fast", headers=("Connection: close",)) + http("GET", "/fast?2"))
        assert_echo(await c.reply(), "fast", "GET", "/fast")
        await c.assert_closed()

    run(scenario)


# ---------------------------------------------------------------------- bad framing

BAD_FRAMING = {
    "request line with two parts": b"GET /fast\r\nHost: x\r\n\r\n",
    "request line with four parts": b"GET /fast extra HTTP/1.1\r\nHost: x\r\n\r\n",
    "request line not HTTP/1.x": b"GET /fast HTTP/2.0\r\nHost: x\r\n\r\n",
    "request line of garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "header line without a colon": b"GET {path} HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    "header with an empty name": b"GET {path} HTTP/1.1\r\n: value\r\n\r\n",
    "header name with a space before the colon": b"GET {path} HTTP/1.1\r\nHost : x\r\n\r\n",
    "obsolete line folding": b"GET {path} HTTP/1.1\r\nX-A: b\r\n  c\r\n\r\n",
    "non-numeric Content-Length": b"PUT {path} HTTP/1.1\r\nContent-Length: ten\r\n\r\n0123456789",
    "negative Content-Length": b"PUT {path} HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    "signed Content-Length": b"PUT {path} HTTP/1.1\r\nContent-Length: +4\r\n\r\nbody",
    "two different Content-Lengths": (
        b"PUT {path} HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nbody!"
    ),
    "huge Content-Length": b"PUT {path} HTTP/1.1\r\nContent-Length: 1" + b"0" * 30 + b"\r\n\r\n",
    "both Content-Length and Transfer-Encoding": (
        b"PUT {path} HTTP/1.1\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nbody\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding gzip": b"PUT {path} HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    "Transfer-Encoding gzip, chunked": (
        b"PUT {path} HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding identity": b"PUT {path} HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
    "non-hex chunk size": b"PUT {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "negative chunk size": (
        b"PUT {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-4\r\nbody\r\n"
    ),
    "empty chunk size": b"PUT {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
    "chunk size with an inner space": (
        b"PUT {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1 0\r\n"
    ),
    "chunk size with a 0x prefix": (
        b"PUT {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x4\r\nbody\r\n0\r\n\r\n"
    ),
    "chunk size too long": (
        b"PUT {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 17 + b"\r\n"
    ),
    "chunk-size line without an end": (
        b"PUT {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"4;"
        + b"e" * (fasthttp.MAX_CHUNK_LINE + 10)
    ),
    "chunk data not ending in CRLF": (
        b"PUT {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbodyXX0\r\n\r\n"
    ),
}


BAD_FRAMING_CASES = [
    pytest.param(case, path, id=f"{case} ({path})" if b"{path}" in data else case)
    for case, data in BAD_FRAMING.items()
    for path in (["/fast", "/plain", "/stream"] if b"{path}" in data else ["/fast"])
]


@pytest.mark.parametrize(("case", "path"), BAD_FRAMING_CASES)
def test_bad_framing_gets_a_json_400_and_a_close(case: str, path: str) -> None:
    data = BAD_FRAMING[case].replace(b"{path}", path.encode())
    if b"Host" not in data:  # tornado itself refuses an HTTP/1.1 request without one
        data = data.replace(b"\r\n", b"\r\nHost: x\r\n", 1)

    async def scenario(h: Harness) -> None:
        good = await h.connect()  # another connection, unaffected
        assert_echo(await good.request(http("GET", "/fast")), "fast", "GET", "/fast")
        c = await h.connect()
        reply = await c.request(data)
        got = assert_json_error(reply, 400, close=True)
        assert got["error"] == "bad_request"
        await c.assert_closed()
        assert h.recorder.finished == 0
        assert_echo(await good.request(http("GET", "/plain")), "plain", "GET", "/plain")
        good.close()

    run(scenario)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /plain HTTP/1.1\r\n\r\n",
        b"GET /plain HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /plain HTTP/1.1\r\nHost: a b\r\n\r\n",
    ],
    ids=["no Host", "two Hosts", "invalid Host"],
)
def test_bridged_request_that_tornado_refuses_gets_a_400_and_a_close(head: bytes) -> None:
    """tornado's HTTPServerRequest raises HTTPInputError on a bad Host header;
    its own HTTP1Connection answers 400 and closes. The bridge must answer too."""

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(head + http("GET", "/fast"))
        assert_json_error(await c.reply(), 400, close=True)
        await c.assert_closed()

    run(scenario)


def test_bad_framing_after_good_requests_on_the_same_connection() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(
            http("GET", "/fast") + http("GET", "/plain") + b"GET /fast HTTP/1.1\r\nBad\r\n\r\n"
        )
        assert_echo(await c.reply(), "fast", "GET", "/fast")
        assert_echo(await c.reply(), "plain", "GET", "/plain")
        assert_json_error(await c.reply(), 400, close=True)
        await c.assert_closed()

    run(scenario)


def test_a_head_larger_than_max_head_gets_a_json_431_and_a_close() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        start = b"GET /fast HTTP/1.1\r\nX-Big: "
        # exactly one byte over, and no end of head: the server reads it all
        data = start + b"a" * (fasthttp.MAX_HEAD + 1 - len(start))
        got = assert_json_error(await c.request(data), 431, close=True)
        assert got["error"] == "request_header_too_large"
        await c.assert_closed()

    run(scenario)


def test_a_large_head_under_max_head_is_served() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        big = "k" * (fasthttp.MAX_HEAD // 2)
        assert_echo(await c.request(http("GET", f"/fast?{big}")), "fast", "GET", "/fast")
        assert_echo(await c.request(http("GET", "/fast")), "fast", "GET", "/fast")
        c.close()

    run(scenario)


# ---------------------------------------------------------------------- body limits


@pytest.mark.parametrize("path", ["/fast", "/fast-async"])
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_fast_body_over_max_body_under_drain_keeps_the_connection(path: str, framing: str) -> None:
    body = b"z" * (FAST_DRAIN - 10)

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        # at the limit: served
        limit = b"y" * FAST_MAX_BODY
        assert_echo(await c.request(http("PUT", path, limit)), path[1:], "PUT", path, limit)
        if framing == "chunked":
            data = chunked("PUT", path, [body[:400], body[400:]])
        else:
            data = http("PUT", path, body)
        reply = await c.request(data)
        assert reply.status == 413
        assert reply.json() == {"error": "too_large_here", "size": len(body)}
        assert "connection" not in reply.headers
        # the body was read and discarded: the connection is still usable
        r = await c.request(http("PUT", path, b"after"))
        assert_echo(r, path[1:], "PUT", path, b"after")
        # also with the next request pipelined right behind the oversized one
        await c.send(data + http("GET", path))
        assert (await c.reply()).status == 413
        assert_echo(await c.reply(), path[1:], "GET", path)
        c.close()

    run(scenario)


def test_fast_body_over_drain_with_content_length_is_refused_and_closed() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        size = FAST_DRAIN + 1
        # the answer comes from the head alone: the body is never sent
        reply = await c.request(http("PUT", "/fast", headers=(f"Content-Length: {size}",)))
        assert reply.status == 413
        assert reply.json() == {"error": "too_large_here", "size": size}
        assert reply.headers["connection"] == "close"
        await c.assert_closed()

    run(scenario)


def test_fast_body_over_drain_chunked_is_refused_and_closed() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        size = FAST_DRAIN + 1
        head = http("PUT", "/fast", headers=("Transfer-Encoding: chunked",))
        reply = await c.request(head + b"%x\r\n" % size + b"q" * size)
        assert reply.status == 413
        assert reply.json()["error"] == "too_large_here"
        assert reply.json()["size"] > FAST_DRAIN
        assert reply.headers["connection"] == "close"
        await c.assert_closed()

    run(scenario)


@pytest.mark.parametrize("path", ["/plain", "/stream"])
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_bridged_body_over_max_body_gets_a_json_413_and_a_close(path: str, framing: str) -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        ok = b"o" * SERVER_MAX_BODY
        assert_echo(await c.request(http("POST", path, ok)), path[1:], "POST", path, ok)
        body = b"t" * (SERVER_MAX_BODY + 1)
        if framing == "chunked":
            data = chunked("POST", path, [body[:600], body[600:]])
        else:
            data = http("POST", path, body)
        got = assert_json_error(await c.request(data), 413, close=True)
        assert got["error"] == "payload_too_large"
        await c.assert_closed()
        assert h.recorder.finished == (1 if path == "/stream" else 0)

    run(scenario)


def test_bridged_handler_that_raised_its_limit_accepts_a_larger_body() -> None:
    """Head and body sent together, as any client does when it does not ask for
    100-continue: the limit the handler sets in prepare must apply to this body."""
    body = b"L" * (SERVER_MAX_BODY * 20)

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        reply = await c.request(http("POST", "/big-stream", body))
        assert_echo(reply, "stream", "POST", "/big-stream", body)
        c.close()

    run(scenario)


def test_bridged_handler_that_raised_its_limit_accepts_a_larger_body_sent_after_prepare() -> None:
    body = b"L" * (SERVER_MAX_BODY * 20)

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(http("POST", "/big-stream", headers=(f"Content-Length: {len(body)}",)))
        await until(lambda: h.recorder.prepared == 1, "prepare to raise the limit")
        await c.send(body)
        assert_echo(await c.reply(), "stream", "POST", "/big-stream", body)
        # the raised limit was for that request only
        await c.send(http("POST", "/stream", headers=(f"Content-Length: {len(body)}",)))
        await until(lambda: h.recorder.prepared == 2, "prepare of the next request")
        await c.send(body)
        assert_json_error(await c.reply(), 413, close=True)
        await c.assert_closed()

    run(scenario)


# ---------------------------------------------------------------------- handler errors


@pytest.mark.parametrize("path", ["/fast-raise", "/fast-raise-async"])
def test_a_fast_handler_that_raises_gets_a_json_500_and_the_server_keeps_serving(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        for _ in range(2):
            got = assert_json_error(await c.request(http("PUT", path, b"{}")), 500, close=False)
            assert got["error"] == "internal_server_error"
            assert_echo(await c.request(http("GET", "/fast")), "fast", "GET", "/fast")
        # pipelined behind a failure
        await c.send(http("GET", path) + http("GET", "/plain"))
        assert (await c.reply()).status == 500
        assert_echo(await c.reply(), "plain", "GET", "/plain")
        c.close()

    with caplog.at_level(logging.ERROR, logger=fasthttp.__name__):
        run(scenario)
    failures = [r for r in caplog.records if r.name == fasthttp.__name__]
    assert len(failures) == 3 and all(r.exc_info for r in failures)


def test_a_bridged_handler_that_raises_gets_a_json_500_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        for _ in range(2):
            assert_json_error(await c.request(http("GET", "/raise")), 500, close=False)
            assert_echo(await c.request(http("GET", "/plain")), "plain", "GET", "/plain")
        c.close()

    with caplog.at_level(logging.CRITICAL, logger="tornado.application"):
        run(scenario)


# ---------------------------------------------------------------------- stopping


def test_stop_closes_every_connection_and_leaves_nothing_running() -> None:
    async def scenario(h: Harness) -> None:
        idle = await h.connect()
        assert_echo(await idle.request(http("GET", "/plain")), "plain", "GET", "/plain")
        half_head = await h.connect()
        await half_head.send(b"GET /fast HTTP/1.1\r\nHost: x")
        half_body = await h.connect()
        await half_body.send(http("PUT", "/fast", headers=("Content-Length: 50",)) + b"12345")
        streaming = await h.connect()
        await streaming.send(chunked("POST", "/stream", [b"part one"])[:-40])
        await until(lambda: h.recorder.chunks == [b"part one"], "the first chunk")
        slow = await h.connect()
        await slow.send(http("GET", "/fast-slow"))
        await until(lambda: h.gate.waiting == 1, "the slow handler to start")
        await until(lambda: len(h.server.connections) == 5, "five connections")

        h.server.stop()

        for client in (idle, half_head, half_body, streaming, slow):
            await client.assert_closed()
        await until(lambda: not h.server.connections, "the connections to be dropped")
        assert h.recorder.closed >= 1 and h.recorder.finished == 0
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", h.port)
        # the slow handler was cancelled: nobody is left to take its answer
        await until(lambda: not others(), "every task to end")
        h.gate.event.set()

    run(scenario)


def test_idle_connections_are_closed_but_not_those_being_answered_or_streamed() -> None:
    async def scenario(h: Harness) -> None:
        answering = await h.connect()
        await answering.send(http("GET", "/fast-slow"))
        await until(lambda: h.gate.waiting == 1, "the slow handler to start")
        streaming = await h.connect()
        stream_request = chunked("POST", "/stream", [b"part one"])
        await streaming.send(stream_request[:-40])
        await until(lambda: h.recorder.chunks == [b"part one"], "the first chunk")
        # Opened last, so by the time the server finds it idle the other two have
        # sent nothing for longer: were they idle, they would be closed by now too.
        silent = await h.connect()
        half_head = await h.connect()
        await half_head.send(b"GET /fast HTTP/1.1\r\nHost: x")
        await silent.assert_closed()
        await half_head.assert_closed()
        await until(lambda: len(h.server.connections) == 2, "two connections left")
        h.gate.event.set()
        assert_echo(await answering.reply(), "fast-slow", "GET", "/fast-slow")
        await streaming.send(stream_request[-40:])
        assert (await streaming.reply()).status == 200

    run(scenario, idle_timeout=0.2)


def test_idle_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="idle_timeout"):
        HttpServer(TestRouter(Gate()), make_app(Recorder()), max_body=1, idle_timeout=0)


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_client_gone_mid_body_tells_the_streamed_handler_once(framing: str) -> None:
    """tornado's HTTP1Connection calls on_connection_close once: through the
    delegate while the body is being read, through the close callback after."""

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        if framing == "chunked":
            await c.send(chunked("POST", "/stream", [b"part one"])[:-40])
        else:
            await c.send(http("POST", "/stream", headers=("Content-Length: 100",)) + b"part one")
        await until(lambda: h.recorder.chunks == [b"part one"], "the first piece")
        c.close()
        await until(lambda: not h.server.connections, "the server to see the close")
        await until(lambda: not others(), "the handler to end")
        assert (h.recorder.closed, h.recorder.finished) == (1, 0)

    run(scenario)
