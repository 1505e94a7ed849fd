"""The HTTP server (`kvcluster.server.http`) on real sockets: framing, tokens, limits.

Each test runs its own event loop (asyncio.run) with an `HttpServer` on
127.0.0.1, port 0, and clients that write raw bytes, so every byte on the wire
is the test's. The limits are small (timeouts of a fraction of a second, a few
KiB of head) so that each bound is reached quickly; each limit's test fails
if the limit is taken away. Nothing sleeps a fixed time to assume something
happened: tests wait for conditions, with generous deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from loops import LOOP, both_loops, run_loop

from kvcluster.server.http import HttpServer, Limits, Reply, Request, Route, error_body

TOKEN = "s3cret-token"
AUTH = f"Authorization: Bearer {TOKEN}"
READ_TIMEOUT = 10.0  # one read; generous for a busy 2-core machine
SCENARIO_TIMEOUT = 90.0  # one whole test
SMALL_BODY = 100  # /small's max_body
FAST = Limits(head_timeout=5.0, idle_timeout=30.0, body_timeout=10.0)


# ---------------------------------------------------------------------- the server side


@dataclass
class App:
    """The routes the tests talk to, and what their handlers saw."""

    held: list[tuple[Request, Reply]] = field(default_factory=list)  # /slow, not yet answered
    requests: list[Request] = field(default_factory=list)  # what /echo saw
    calls: list[str] = field(default_factory=list)  # "METHOD target" in dispatch order
    lines: list[bytes] = field(default_factory=list)  # /stream's lines, in order
    streams_ended: int = 0
    big_max_body: int = 10_000_000

    def router(self, method: str, path: str) -> Route | int | None:
        if path == "/echo":
            return Route(self.echo)
        if path == "/small":
            return Route(self.echo, max_body=SMALL_BODY)
        if path == "/big":
            return Route(self.echo, max_body=self.big_max_body)
        if path == "/slow":
            return Route(self.slow)
        if path == "/later":
            return Route(self.later)
        if path == "/blob":
            return Route(self.blob)
        if path == "/raise":
            return Route(self.raise_)
        if path == "/twice":
            return Route(self.twice)
        if path == "/bad-header":
            return Route(self.bad_header)
        if path == "/bad-status":
            return Route(self.bad_status)
        if path == "/peer":
            return Route(self.echo, token=True, max_body=1 << 20)
        if path == "/stream":
            return Route(self.stream_end, token=True, max_body=1000, lines=self.line)
        if path == "/get-only":
            return Route(self.echo) if method == "GET" else 405
        if path == "/teapot":
            return 418
        if path == "/router-raises":
            raise RuntimeError("router failure (on purpose)")
        if path == "/router-nonsense":
            return 42
        return None

    def echo(self, request: Request, reply: Reply) -> None:
        self.calls.append(f"{request.method} {request.target}")
        self.requests.append(request)
        body = {
            "method": request.method,
            "target": request.target,
            "path": request.path,
            "query": request.query,
            "body": request.body.decode("latin-1"),
            "peer": request.peer,
            "headers": dict(request.headers),
            "remote": request.remote,
        }
        reply(200, json.dumps(body).encode(), [("X-Handler", "echo")])

    def slow(self, request: Request, reply: Reply) -> None:
        self.calls.append(f"{request.method} {request.target}")
        self.held.append((request, reply))

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            request, reply = self.held.pop(0)
            reply(200, json.dumps({"slow": request.target}).encode(), ())

    def later(self, request: Request, reply: Reply) -> None:
        self.calls.append(f"{request.method} {request.target}")
        body = json.dumps({"later": request.target}).encode()
        asyncio.get_running_loop().call_soon(reply, 200, body, ())

    def blob(self, request: Request, reply: Reply) -> None:
        self.calls.append("blob")
        reply(200, b'"' + b"x" * 8190 + b'"', ())

    def raise_(self, request: Request, reply: Reply) -> None:
        raise RuntimeError("handler failure (on purpose)")

    def twice(self, request: Request, reply: Reply) -> None:
        reply(200, b'{"n": 1}', ())
        reply(200, b'{"n": 2}', ())

    def bad_status(self, request: Request, reply: Reply) -> None:
        status, _, body = request.query.partition("&")
        reply(int(status), body.encode(), ())

    def bad_header(self, request: Request, reply: Reply) -> None:
        reply(200, b"{}", [("X-Evil", "a\r\nSet-Cookie: x=1")])

    def line(self, request: Request, line: bytes) -> None:
        if line == b"raise":
            raise RuntimeError("line handler failure (on purpose)")
        self.lines.append(line)

    def stream_end(self, request: Request, reply: Reply) -> None:
        self.streams_ended += 1
        reply(200, json.dumps({"lines": len(self.lines)}).encode(), ())


@dataclass
class Harness:
    server: HttpServer
    port: int
    app: App
    clients: list[Client] = field(default_factory=list)

    async def connect(self, *, rcvbuf: int | None = None) -> Client:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port)),
                READ_TIMEOUT,
            )
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        client = Client(reader, writer)
        self.clients.append(client)
        return client


async def until(condition: Callable[[], bool], what: str, timeout: float = READ_TIMEOUT) -> None:
    """Wait for a condition the test cannot await directly (polls the loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextlib.asynccontextmanager
async def serving(limits: Limits = FAST, app: App | None = None) -> AsyncIterator[Harness]:
    app = app or App()
    server = HttpServer(app.router, token=TOKEN, limits=limits)
    sock = listening_socket()
    await server.listen([sock])
    harness = Harness(server, sock.getsockname()[1], app)
    try:
        yield harness
    finally:
        for client in harness.clients:
            client.close()
        server.close()
    # close() closed every connection: nothing is left open or counted.
    await until(lambda: server.connections == 0, "the connections to close")
    assert server.clients == server.peers == server.pending == 0
    assert server.buffered == 0, server.buffered
    assert sock.fileno() == -1  # the listening socket was closed with the server


def run(scenario: Callable[[Harness], Awaitable[None]], limits: Limits = FAST) -> None:
    async def main() -> None:
        async with serving(limits) as harness:
            async with asyncio.timeout(SCENARIO_TIMEOUT):
                await scenario(harness)

    run_loop(main())


# ---------------------------------------------------------------------- the client side


@dataclass
class Answer:
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

    async def answer(self, timeout: float = READ_TIMEOUT, *, head: bool = False) -> Answer:
        """The next response on the wire, a 1xx included (without a body); `head`:
        the answer to a HEAD request (no body, whatever Content-Length says)."""
        try:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        except TimeoutError:
            raise AssertionError(f"no response within {timeout} s") from None
        lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status, reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"header {name} twice"
            headers[name.strip().lower()] = value.strip()
        code = int(status)
        body = b""
        if code in (204, 304):
            assert "content-length" not in headers and "content-type" not in headers
        elif code >= 200:
            assert "transfer-encoding" not in headers  # never chunked
            assert headers["content-type"] == "application/json"
            n = int(headers["content-length"])
            if not head:
                body = await asyncio.wait_for(self.reader.readexactly(n), timeout)
        return Answer(code, reason, headers, body)

    async def request(self, data: bytes) -> Answer:
        await self.send(data)
        return await self.answer()

    async def assert_closed(self) -> None:
        """The server closed the connection, with nothing more to read."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), READ_TIMEOUT)
        except ConnectionResetError:
            return
        assert rest == b"", f"more bytes after the last answer: {rest[:200]!r}"

    async def assert_open(self) -> None:
        """The connection still works: a request on it is answered."""
        answer = await self.request(http("GET", "/echo?alive"))
        assert answer.status == 200 and answer.json()["query"] == "alive"

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


def chunked_body(chunks: list[bytes], *, extensions: bool = True, trailers: bool = True) -> bytes:
    ext = (lambda i: f';ext={i};q="a b"'.encode()) if extensions else (lambda i: b"")
    body = b"".join(b"%x%b\r\n%b\r\n" % (len(c), ext(i), c) for i, c in enumerate(chunks))
    tail = b"0\r\nX-Trailer: one\r\nX-Other: two\r\n\r\n" if trailers else b"0\r\n\r\n"
    return body + tail


def chunked(
    method: str, target: str, chunks: list[bytes], *, headers: tuple[str, ...] = ()
) -> bytes:
    return http(method, target, headers=("Transfer-Encoding: chunked", *headers)) + chunked_body(
        chunks
    )


def assert_error(answer: Answer, status: int, code: str, *, closes: bool = True) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body[:300])
    body = answer.json()
    assert set(body) >= {"error", "message"} and body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    if closes:
        assert answer.headers.get("connection") == "close"
    return body


def rss() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------- limits and errors


def test_limits_are_validated() -> None:
    assert Limits().max_head == 64 << 10 and Limits().max_connections == 1000
    assert Limits(peer_reserve=0).peer_reserve == 0
    for bad in (
        {"max_head": 0},
        {"head_timeout": -1.0},
        {"idle_timeout": 0},
        {"max_buffered": 10, "max_head": 100},
        {"max_connections": 1.5},
        {"max_unsent": True},
        {"peer_reserve": -1},
    ):
        with pytest.raises(ValueError):
            Limits(**bad)
    assert 0.01 <= Limits(head_timeout=0.3).sweep_interval <= 0.1
    assert Limits().sweep_interval == 0.5


def test_error_envelope_and_route_checks() -> None:
    assert json.loads(error_body("not_found", "no route /x", path="/x")) == {
        "error": "not_found",
        "message": "no route /x",
        "path": "/x",
    }
    with pytest.raises(ValueError, match="token route"):
        Route(lambda r, reply: None, lines=lambda r, line: None)
    with pytest.raises(ValueError):
        Route(lambda r, reply: None, max_body=-1)
    with pytest.raises(ValueError, match="token"):
        HttpServer(App().router, token="")


# ---------------------------------------------------------------------- framing


@both_loops
def test_keep_alive_and_headers() -> None:
    async def scenario(h: Harness) -> None:
        on_uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        assert on_uvloop == (LOOP["name"] == "uvloop")
        c = await h.connect()
        for i in range(5):
            answer = await c.request(
                http("GET", f"/echo?i={i}", headers=("X-Rep: a", "x-rep: b", "X-Pad:  v  "))
            )
            assert answer.status == 200 and answer.reason == "OK"
            assert answer.headers["x-handler"] == "echo"
            assert "connection" not in answer.headers  # HTTP/1.1: keep-alive by default
            got = answer.json()
            assert (got["method"], got["path"], got["query"]) == ("GET", "/echo", f"i={i}")
            assert got["headers"]["x-rep"] == "a, b"  # lower-case names, repeats joined
            assert got["headers"]["x-pad"] == "v"
            assert got["peer"] is False and got["remote"].startswith("127.0.0.1:")
        answer = await c.request(http("PUT", "/echo/..%2Fx?q=%20", b'{"v": 1}'))
        assert answer.status == 404  # the path is exact: /echo/... is not /echo
        answer = await c.request(http("PUT", "/echo?q=%20&r", b'{"v": 1}'))
        got = answer.json()
        assert got["body"] == '{"v": 1}' and got["query"] == "q=%20&r"
        assert got["target"] == "/echo?q=%20&r"
        assert h.server.clients == 1 and h.server.peers == 0
        # TCP_NODELAY on the accepted socket
        (conn,) = h.server._connections
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    run(scenario)


@both_loops
def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        burst = (
            http("GET", "/slow?1")
            + http("PUT", "/echo?2", b"two")
            + http("GET", "/later?3")
            + chunked("POST", "/echo?4", [b"fo", b"ur"])
            + http("GET", "/slow?5")
            + http("GET", "/echo?6")
        )
        await c.send(burst)
        await until(lambda: len(h.app.held) == 1, "the first request to be dispatched")
        # The next request waits for the first one's answer: nothing else was dispatched.
        assert h.app.calls == ["GET /slow?1"]
        h.app.release()
        assert (await c.answer()).json() == {"slow": "/slow?1"}
        assert (await c.answer()).json()["body"] == "two"
        assert (await c.answer()).json() == {"later": "/later?3"}
        assert (await c.answer()).json()["body"] == "four"
        await until(lambda: len(h.app.held) == 1, "the fifth request")
        assert h.app.calls[-1] == "GET /slow?5"
        h.app.release()
        assert (await c.answer()).json() == {"slow": "/slow?5"}
        assert (await c.answer()).json()["query"] == "6"
        assert h.app.calls == [
            "GET /slow?1",
            "PUT /echo?2",
            "GET /later?3",
            "POST /echo?4",
            "GET /slow?5",
            "GET /echo?6",
        ]
        await c.assert_open()

    run(scenario)


@both_loops
def test_many_pipelined_requests_in_one_write() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        n = 500
        requests = [
            http("PUT", f"/echo?{i}", b"v" * (i % 50)) if i % 3 else http("GET", f"/later?{i}")
            for i in range(n)
        ]
        await c.send(b"".join(requests))
        for i in range(n):
            got = (await c.answer()).json()
            assert got.get("query", got.get("later", "").partition("?")[2]) == str(i)
        assert h.server.buffered == 0

    run(scenario)


def test_bodies_split_byte_by_byte() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        data = http("POST", "/echo", b"0123456789") + chunked("POST", "/echo", [b"ab", b"cde"])
        for i in range(len(data)):
            await c.send(data[i : i + 1])
        assert (await c.answer()).json()["body"] == "0123456789"
        assert (await c.answer()).json()["body"] == "abcde"
        # random splits of many requests
        rng = random.Random(7)
        data = b"".join(
            chunked("POST", f"/echo?{i}", [bytes([65 + i % 26]) * rng.randrange(1, 40)] * 3)
            for i in range(30)
        )
        pos = 0
        while pos < len(data):
            step = rng.randrange(1, 200)
            await c.send(data[pos : pos + step])
            pos += step
        for i in range(30):
            got = (await c.answer()).json()
            assert got["query"] == str(i) and set(got["body"]) == {chr(65 + i % 26)}

    run(scenario)


def test_chunked_body_with_extensions_and_trailers() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        answer = await c.request(chunked("PUT", "/echo", [b"hello ", b"chunked ", b"world"]))
        got = answer.json()
        assert got["body"] == "hello chunked world"
        assert "x-trailer" not in got["headers"]  # trailers are not headers
        await c.assert_open()

    run(scenario)


def test_expect_100_continue() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(http("PUT", "/echo", headers=("Content-Length: 5", "Expect: 100-continue")))
        interim = await c.answer()
        assert interim.status == 100
        answer = await c.request(b"hello")
        assert answer.status == 200 and answer.json()["body"] == "hello"
        # chunked, and the token route with the token
        await c.send(
            http(
                "POST",
                "/peer",
                headers=("Transfer-Encoding: chunked", AUTH, "Expect: 100-continue"),
            )
        )
        assert (await c.answer()).status == 100
        answer = await c.request(chunked_body([b"x" * 10]))
        assert answer.json()["body"] == "x" * 10 and answer.json()["peer"] is True
        # no body: no 100
        answer = await c.request(http("GET", "/echo", headers=("Expect: 100-continue",)))
        assert answer.status == 200

        # Not read, so no 100: too large, no token, no route, unknown expectation.
        for data, status, code in [
            (http("PUT", "/small", headers=("Content-Length: 101", "Expect: 100-continue")),
             413, "payload_too_large"),
            (http("POST", "/peer", headers=("Content-Length: 5", "Expect: 100-continue")),
             401, "unauthorized"),
            (http("POST", "/nowhere", headers=("Content-Length: 5", "Expect: 100-continue")),
             404, "not_found"),
            (http("POST", "/echo", headers=("Content-Length: 5", "Expect: something")),
             417, "expectation_failed"),
        ]:  # fmt: skip
            c = await h.connect()
            assert_error(await c.request(data), status, code)
            await c.assert_closed()

    run(scenario)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"GET /echo HTTP/1.1 extra\r\n\r\n", "request line"),
        (b"GARBAGE\r\n\r\n", "method"),
        (b"GET /ec ho HTTP/1.1\r\n\r\n", "target"),
        (b"GET /echo HTTP/2.0\r\n\r\n", "HTTP/2.0"),
        (b"GET /echo HTTP/0.9\r\n\r\n", "HTTP/0.9"),
        (b"GET /echo HTTP/1.2\r\n\r\n", "HTTP/1.2"),
        (b"GET /echo HTTP/1.1\r\nBad Header: 1\r\n\r\n", "header name"),
        (b"GET /echo HTTP/1.1\r\nX: a\x00b\r\n\r\n", "header value"),
        (b"GET /echo HTTP/1.1\nHost: x\n\n", "bare LF"),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "two lengths"),
        (b"POST /echo HTTP/1.1\r\nContent-Length: -5\r\n\r\n", "negative length"),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", "overflow"),
        (
            b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "length and chunked",
        ),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "gzip"),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "gzip"),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n", "chunk size"),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 20, "overflow"),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", "chunk end"),
        (b"GET /echo HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", "upgrade"),
        (b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", "CONNECT"),
    ],
)
def test_malformed_requests_get_a_json_400_and_close(data: bytes, what: str) -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        # A good request first: the error comes after its answer, on the same connection.
        await c.send(http("GET", "/echo?first") + data)
        assert (await c.answer()).json()["query"] == "first"
        answer = await c.answer()
        body = assert_error(answer, 400, "bad_request")
        assert what and body["message"]
        await c.assert_closed()
        assert h.server.refused["bad_request"] == 1

    run(scenario)


def test_routing_errors() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        body = assert_error(
            await c.request(http("GET", "/nowhere?x")), 404, "not_found", closes=False
        )
        assert body["message"] == "no route /nowhere; see the README for the API"
        body = assert_error(
            await c.request(http("DELETE", "/get-only")), 405, "method_not_allowed", closes=False
        )
        assert "allow" not in (await c.request(http("PUT", "/get-only"))).headers
        assert (await c.request(http("GET", "/get-only"))).status == 200
        assert_error(await c.request(http("GET", "/teapot")), 418, "im_a_teapot", closes=False)
        # a body on a missing route is read (bounded) and dropped; the connection lives on
        assert_error(
            await c.request(http("PUT", "/nowhere", b"x" * 1000)), 404, "not_found", closes=False
        )
        assert_error(
            await c.request(http("GET", "/router-raises")), 500, "internal_error", closes=False
        )
        assert_error(
            await c.request(http("GET", "/router-nonsense")), 500, "internal_error", closes=False
        )
        await c.assert_open()

    run(scenario)


def test_handler_errors_answer_500_and_the_connection_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        with caplog.at_level(logging.ERROR, logger="kvcluster.server.http"):
            body = assert_error(
                await c.request(http("GET", "/raise")), 500, "internal_error", closes=False
            )
            assert "please report this as a bug" in body["message"]
            await c.assert_open()
            # a second reply is ignored (and logged); the next request gets its own answer
            assert (await c.request(http("GET", "/twice"))).json() == {"n": 1}
            await c.assert_open()
            # statuses that are not answers, or a body where there can be none: 500
            for query in ("100&{}", "199&{}", "99&{}", "600&{}", "204&{}", "304&x"):
                answer = await c.request(http("GET", f"/bad-status?{query}"))
                assert_error(answer, 500, "internal_error", closes=False)
            # 204 and 304 without a body: no Content-Length, and the connection goes on
            for query in ("204&", "304&"):
                answer = await c.request(http("GET", f"/bad-status?{query}"))
                assert answer.status == int(query[:3]) and answer.body == b""
            # a header that would split the response is refused: 500, not injected
            assert_error(
                await c.request(http("GET", "/bad-header")), 500, "internal_error", closes=False
            )
            await c.assert_open()
        messages = [r.getMessage() for r in caplog.records]
        assert any("internal error in GET /raise" in m for m in messages)
        assert any(r.exc_info for r in caplog.records)  # with the traceback
        assert any("second reply" in m for m in messages)

    run(scenario)


def test_payload_too_large_by_content_length_is_answered_before_the_body() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        assert (await c.request(http("PUT", "/small", b"x" * SMALL_BODY))).status == 200
        # Declared over the limit: answered at once, without the body being sent.
        await c.send(http("PUT", "/small", headers=("Content-Length: 5000000000",)))
        body = assert_error(await c.answer(), 413, "payload_too_large")
        assert str(SMALL_BODY) in body["message"]
        await c.assert_closed()
        assert h.server.buffered == 0

    run(scenario)


def test_payload_too_large_by_a_growing_chunked_body() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(http("PUT", "/small", headers=("Transfer-Encoding: chunked",)))
        await c.send(chunked_body([b"x" * 60], trailers=False)[:-5])  # 60 bytes, not the end
        await c.send(b"%x\r\n%s\r\n" % (60, b"y" * 60))  # 120 > 100
        assert_error(await c.answer(), 413, "payload_too_large")
        await c.assert_closed()
        assert h.server.refused["payload_too_large"] == 1

    run(scenario)


def test_request_header_too_large() -> None:
    limits = Limits(max_head=4096, head_timeout=5.0)

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        # just under: fine
        ok = http("GET", "/echo", headers=("X-Fill: " + "f" * 3900,))
        assert (await c.request(ok)).status == 200
        # a complete head over max_head
        over = http("GET", "/echo", headers=("X-Fill: " + "f" * 5000,))
        assert_error(await c.request(over), 431, "request_header_too_large")
        await c.assert_closed()
        # a head that never ends: refused long before the client stops sending
        c = await h.connect()
        await c.send(b"GET /echo HTTP/1.1\r\n")
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < 10 << 20:
                c.writer.write(b"X-Fill: " + b"f" * 1000 + b"\r\n")
                sent += 1010
                await asyncio.wait_for(c.writer.drain(), READ_TIMEOUT)
                if c.reader.at_eof() or c.reader._buffer:  # type: ignore[attr-defined]
                    break
        assert sent < 1 << 20, "the server kept reading a head that never ends"
        assert_error(await c.answer(), 431, "request_header_too_large")
        await c.assert_closed()
        assert h.server.refused["request_header_too_large"] == 2

    run(scenario, limits)


def test_http_1_0_and_connection_close() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        answer = await c.request(http("GET", "/echo?a", version="HTTP/1.0"))
        assert answer.status == 200 and answer.headers["connection"] == "close"
        await c.assert_closed()

        c = await h.connect()
        for _ in range(3):  # HTTP/1.0 with keep-alive stays open
            answer = await c.request(
                http("GET", "/echo", version="HTTP/1.0", headers=("Connection: keep-alive",))
            )
            assert answer.status == 200 and answer.headers["connection"] == "keep-alive"
        # Connection: close from an HTTP/1.1 client: answered, then closed; what
        # follows it is not read.
        await c.send(
            http("GET", "/later?last", headers=("Connection: close",)) + http("GET", "/echo?never")
        )
        answer = await c.answer()
        assert answer.json() == {"later": "/later?last"}
        assert answer.headers["connection"] == "close"
        await c.assert_closed()
        assert "GET /echo?never" not in h.app.calls

    run(scenario)


@both_loops
def test_half_closed_client_gets_its_pipelined_answers() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(http("GET", "/slow?a") + http("GET", "/later?b") + http("GET", "/echo?c"))
        c.writer.write_eof()
        await until(lambda: len(h.app.held) == 1, "the first request")
        h.app.release()
        assert (await c.answer()).json() == {"slow": "/slow?a"}
        assert (await c.answer()).json() == {"later": "/later?b"}
        assert (await c.answer()).json()["query"] == "c"
        await c.assert_closed()

    run(scenario)


def test_server_close_closes_everything_and_late_replies_are_ignored() -> None:
    async def main() -> None:
        app = App()
        server = HttpServer(app.router, token=TOKEN, limits=FAST)
        sock = listening_socket()
        port = sock.getsockname()[1]
        await server.listen([sock])
        harness = Harness(server, port, app)
        c = await harness.connect()
        await c.send(http("GET", "/slow"))
        await until(lambda: len(app.held) == 1, "the request")
        server.close()
        await c.assert_closed()
        app.release()  # the connection is gone: a no-op
        await until(lambda: server.connections == 0, "the connection to be forgotten")
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        c.close()

    run_loop(main())


# ---------------------------------------------------------------------- token routes


@both_loops
def test_token_route_refuses_before_reading_the_body() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        # A peer-sized body announced without the token: 401 at once, nothing buffered.
        await c.send(http("POST", "/peer", headers=("Content-Length: 1000000",)))
        body = assert_error(await c.answer(), 401, "unauthorized")
        assert "token" in body["message"]
        await c.assert_closed()
        wrong = ("Bearer wrong", f"bearer {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x")
        for auth in (f"Authorization: {value}" for value in wrong):
            c = await h.connect()
            await c.send(http("POST", "/peer", headers=("Content-Length: 1000000", auth)))
            assert_error(await c.answer(), 401, "unauthorized")
            await c.assert_closed()
        assert h.server.buffered == 0 and h.server.peers == 0
        assert h.server.refused["unauthorized"] == 5
        # with the token: read, answered, and the connection is a peer's
        c = await h.connect()
        answer = await c.request(http("POST", "/peer", b"hello", headers=(AUTH,)))
        assert answer.status == 200 and answer.json()["peer"] is True
        assert h.server.peers == 1
        # any route with the token marks the request (and the connection) as a peer's
        c2 = await h.connect()
        assert (await c2.request(http("GET", "/echo", headers=(AUTH,)))).json()["peer"] is True
        assert h.server.peers == 2
        assert (await c2.request(http("GET", "/echo"))).json()["peer"] is False

    run(scenario)


def stream_head(auth: str = AUTH) -> bytes:
    return http("POST", "/stream", headers=("Transfer-Encoding: chunked", auth))


@both_loops
def test_streamed_lines_arrive_in_order_across_any_split() -> None:
    async def scenario(h: Harness) -> None:
        rng = random.Random(11)
        lines = [b"line %d " % i + b"z" * rng.randrange(0, 300) for i in range(400)]
        text = b"".join(line + b"\n" for line in lines)
        # cut the text into chunks at random places, then the wire into random packets
        chunks, pos = [], 0
        while pos < len(text):
            step = rng.choice([1, 2, 7, 50, 333, 1000, 5000])
            chunks.append(text[pos : pos + step])
            pos += step
        wire = stream_head() + chunked_body(chunks, extensions=False, trailers=False)
        c = await h.connect()
        pos = 0
        while pos < len(wire):
            step = rng.choice([1, 3, 64, 1500, 20000])
            await c.send(wire[pos : pos + step])
            pos += step
        answer = await c.answer()
        assert answer.json() == {"lines": len(lines)}
        assert h.app.lines == lines and h.app.streams_ended == 1
        await c.assert_open()

    run(scenario)


def test_streamed_lines_are_passed_as_they_arrive_and_have_no_body_deadline() -> None:
    limits = Limits(head_timeout=0.3, body_timeout=0.3, idle_timeout=30.0)

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(stream_head())
        for i in range(3):
            await c.send(b"%x\r\n%s\r\n" % (len(b"msg%d\n" % i), b"msg%d\n" % i))
            await until(lambda i=i: len(h.app.lines) == i + 1, "the line to arrive")  # type: ignore[misc]
        # quiet for longer than body_timeout: a peer link is not a slow body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert h.server.refused["request_timeout"] == 0 and h.server.peers == 1
        # a line handler's exception is logged; the stream goes on
        await c.send(b"6\r\nraise\n\r\n4\r\nlast\r\n5\r\n\nend\n\r\n")
        await until(lambda: len(h.app.lines) == 5, "the last lines")
        assert h.app.lines == [b"msg0", b"msg1", b"msg2", b"last", b"end"]
        await c.send(b"0\r\n\r\n")
        assert (await c.answer()).json() == {"lines": 5}

    run(scenario, limits)


def test_over_long_streamed_line_is_refused() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(stream_head() + b"5\r\nshort\r\n")  # "short" is not yet a line...
        await c.send(b"1\r\n\n\r\n")  # ...now it is
        await until(lambda: h.app.lines == [b"short"], "the first line")
        for _ in range(20):  # 1100 bytes and no newline: over the route's 1000
            await c.send(b"37\r\n" + b"y" * 55 + b"\r\n")
        body = assert_error(await c.answer(), 400, "bad_request")
        assert "line" in body["message"]
        await c.assert_closed()
        assert h.app.streams_ended == 0 and h.server.buffered == 0
        # one line over the bound within a single chunk, too
        c = await h.connect()
        await c.send(stream_head() + chunked_body([b"x" * 1001 + b"\n"], extensions=False))
        assert_error(await c.answer(), 400, "bad_request")
        # and a body that ends inside a line
        c = await h.connect()
        await c.send(stream_head() + chunked_body([b"a\nb"], extensions=False))
        assert_error(await c.answer(), 400, "bad_request")

    run(scenario)


# ---------------------------------------------------------------------- deadlines

TIMED = Limits(head_timeout=0.3, body_timeout=0.5, idle_timeout=0.4)


async def trickle(c: Client, data: bytes, every: float, give_up: float) -> int:
    """Send `data` one byte every `every` seconds until the server answers;
    how many bytes were sent. Fails if `give_up` seconds pass first: the
    server must answer while the bytes keep coming."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up
    sent = 0
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            if c.reader._buffer or c.reader.at_eof():  # type: ignore[attr-defined]
                return sent
            assert loop.time() < deadline, "no answer while the client kept sending"
            await c.send(data[i : i + 1])
            sent += 1
            await asyncio.sleep(every)
    return sent


def test_slow_head_gets_408_although_bytes_keep_coming() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        loop = asyncio.get_running_loop()
        start = loop.time()
        head = http("GET", "/echo", headers=tuple(f"X-{i}: {i}" for i in range(200)))
        sent = await trickle(c, head, every=0.02, give_up=8.0)
        assert sent < len(head), "the head was completed: the client was too fast"
        body = assert_error(await c.answer(), 408, "request_timeout")
        assert "head" in body["message"]
        assert loop.time() - start >= TIMED.head_timeout
        await c.assert_closed()

    run(scenario, TIMED)


@both_loops
def test_slow_body_gets_408_although_bytes_keep_coming() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        loop = asyncio.get_running_loop()
        await c.send(http("PUT", "/big", headers=("Content-Length: 1000",)))
        start = loop.time()
        sent = await trickle(c, b"b" * 1000, every=0.02, give_up=8.0)
        assert sent < 1000
        body = assert_error(await c.answer(), 408, "request_timeout")
        assert "body" in body["message"]
        assert loop.time() - start >= TIMED.body_timeout
        await c.assert_closed()
        assert h.server.buffered == 0
        # chunked, too
        c = await h.connect()
        await c.send(http("PUT", "/big", headers=("Transfer-Encoding: chunked",)))
        await trickle(c, b"1\r\nx\r\n" * 1000, every=0.01, give_up=8.0)
        assert_error(await c.answer(), 408, "request_timeout")

    run(scenario, TIMED)


def test_idle_connections_are_closed_silently() -> None:
    async def scenario(h: Harness) -> None:
        fresh = await h.connect()  # never sends anything
        used = await h.connect()
        assert (await used.request(http("GET", "/echo"))).status == 200
        await fresh.assert_closed()
        await used.assert_closed()  # no 408: nothing was started
        assert h.server.refused["idle"] == 2 and h.server.refused["request_timeout"] == 0

    run(scenario, TIMED)


def test_a_busy_connection_is_not_idle_and_a_pipelined_head_clock_starts_at_the_answer() -> None:
    limits = Limits(head_timeout=1.0, body_timeout=0.5, idle_timeout=0.4)

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        # /slow is held for longer than every timeout, with a partial next head behind it.
        await c.send(http("GET", "/slow") + b"GET /echo?next HTTP/1.1\r\nHost: x\r\n")
        await until(lambda: len(h.app.held) == 1, "the first request")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.5  # > idle_timeout, head_timeout and body_timeout
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert h.server.connections == 1 and not h.server.refused
        h.app.release()
        assert (await c.answer()).json() == {"slow": "/slow"}
        # the pipelined head's clock started with that answer: it can still finish
        answer = await c.request(b"\r\n")
        assert answer.json()["query"] == "next"

    run(scenario, limits)


# ---------------------------------------------------------------------- memory and connections


@both_loops
def test_max_buffered_bounds_unfinished_bodies_across_connections() -> None:
    body_size = 9_000_000
    limits = Limits(max_buffered=24 << 20, body_timeout=120.0, head_timeout=60.0)
    attackers = 30

    async def scenario(h: Harness) -> None:
        loop = asyncio.get_running_loop()
        payload = memoryview(b"p" * (body_size - 1))  # one byte short of the body
        head = http("PUT", "/big", headers=(f"Content-Length: {body_size}",))
        sockets: list[socket.socket] = []
        outcome: list[str] = []
        peak = {"buffered": 0, "rss": 0}
        base_rss = rss()

        async def attack() -> None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", h.port))
            try:
                await loop.sock_sendall(sock, head)
                for offset in range(0, len(payload), 1 << 20):
                    await loop.sock_sendall(sock, payload[offset : offset + (1 << 20)])
            except ConnectionError:
                outcome.append("refused")
                return
            # everything was written: held by the server, or refused after the kernel took it
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 1.0)
            except TimeoutError:
                outcome.append("held")
            except ConnectionError:
                outcome.append("refused")
            else:
                outcome.append("refused" if data == b"" or b" 503 " in data else "other")

        def sample() -> None:
            peak["buffered"] = max(peak["buffered"], h.server.buffered)
            peak["rss"] = max(peak["rss"], rss() - base_rss)

        good = await h.connect()
        good_answers: list[int] = []

        async def well_behaved() -> None:
            nonlocal good
            while len(outcome) < attackers:
                answer = await good.request(http("GET", "/echo?good"))
                good_answers.append(answer.status)
                if answer.status != 200:  # a rare 503 when the bytes are at the bound
                    assert_error(answer, 503, "server_busy")
                    good = await h.connect()
                sample()
                await asyncio.sleep(0.01)

        tasks = [asyncio.ensure_future(attack()) for _ in range(attackers)]
        watcher = asyncio.ensure_future(well_behaved())
        try:
            while len(outcome) < attackers:
                sample()
                await asyncio.sleep(0.005)
            await watcher
        finally:
            for t in [*tasks, watcher]:
                t.cancel()
            await asyncio.gather(*tasks, watcher, return_exceptions=True)
            for sock in sockets:
                sock.close()
        sample()
        held = outcome.count("held")
        assert outcome.count("other") == 0, outcome
        # The bound held: at most two 9 MB bodies fit in 24 MiB; the rest were refused.
        assert 1 <= held <= 2, outcome
        assert h.server.refused["server_busy"] >= attackers - 2
        assert peak["buffered"] <= limits.max_buffered
        # This process (server and clients) grew by far less than the 257 MiB
        # the thirty bodies would hold without the bound.
        assert peak["rss"] < limits.max_buffered + (48 << 20), peak
        # The well-behaved client was answered throughout.
        assert good_answers.count(200) >= max(10, int(0.9 * len(good_answers))), good_answers
        await good.assert_open()
        await until(lambda: h.server.buffered < 1000, "the held bodies to be released")

    run(scenario, limits)


@both_loops
def test_max_connections_refuses_clients_quickly_and_keeps_room_for_peers() -> None:
    limits = Limits(max_connections=4, peer_reserve=2, head_timeout=60.0, idle_timeout=60.0)

    async def scenario(h: Harness) -> None:
        server = h.server
        clients = [await h.connect() for _ in range(4)]
        for c in clients:
            assert (await c.request(http("GET", "/echo"))).status == 200
        assert server.clients == 4
        # over the cap: a client's first request is refused at once (head_timeout is 60 s)
        extra = await h.connect()
        body = assert_error(await extra.request(http("GET", "/echo")), 503, "too_many_connections")
        assert "limit" in body["message"]
        await extra.assert_closed()
        extra.close()
        # a token on a non-token route is not enough for the reserve
        extra = await h.connect()
        assert_error(await extra.request(http("GET", "/echo", headers=(AUTH,))), 503,
                     "too_many_connections")  # fmt: skip
        extra.close()
        await until(lambda: server.connections == 4, "the refused connections to close")
        # a peer still gets in, on a token route with the token, and stays
        peers = [await h.connect() for _ in range(2)]
        for p in peers:
            answer = await p.request(http("POST", "/peer", b"hi", headers=(AUTH,)))
            assert answer.status == 200 and answer.json()["peer"] is True
            await p.assert_open()
        assert (server.clients, server.peers, server.pending) == (4, 2, 0)
        # at max_connections + peer_reserve: closed at accept, without a word
        loop = asyncio.get_running_loop()
        start = loop.time()
        late = await h.connect()
        await late.assert_closed()
        assert loop.time() - start < limits.head_timeout
        assert server.refused["connection_limit"] >= 1
        # a client leaves: a new client is served again
        clients[0].close()
        await until(lambda: server.clients == 3, "the client to leave")
        again = await h.connect()
        assert (await again.request(http("GET", "/echo"))).status == 200
        assert server.clients == 4

    run(scenario, limits)


@both_loops
def test_a_client_that_pipelines_and_never_reads_is_bounded() -> None:
    limits = Limits(max_unsent=64 << 10, max_head=4096, idle_timeout=30.0, head_timeout=30.0)
    give_up = 64 << 20  # without write backpressure the server would read all of this

    async def scenario(h: Harness) -> None:
        loop = asyncio.get_running_loop()
        base_rss = rss()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", h.port))
            batch = http("GET", "/blob") * 1000
            sent = 0
            last_progress = loop.time()
            peak_unsent = peak_buffered = 0
            good = await h.connect()
            good_answers = 0
            while sent < give_up and loop.time() - last_progress < 1.0:
                try:
                    n = sock.send(batch)
                except BlockingIOError:
                    # the attacker cannot write: meanwhile, another client is answered
                    assert (await good.request(http("GET", "/echo"))).status == 200
                    good_answers += 1
                    await asyncio.sleep(0.01)
                else:
                    sent += n
                    last_progress = loop.time()
                    await asyncio.sleep(0)
                peak_unsent = max(peak_unsent, h.server.unsent())
                peak_buffered = max(peak_buffered, h.server.buffered)
            assert sent < give_up, "the server kept reading a client that never reads"
            answered = h.app.calls.count("blob")
            # what the server holds for this client: at most max_unsent plus one
            # answer unsent, and max_head plus a read of unparsed requests
            assert peak_unsent <= limits.max_unsent + 8300, peak_unsent
            assert peak_buffered <= limits.max_head + (256 << 10) + (16 << 10), peak_buffered
            assert rss() - base_rss < 48 << 20
            assert good_answers >= 1
            assert (await good.request(http("GET", "/echo"))).status == 200
            # and it stays stalled: nothing more is answered for this client
            before = h.app.calls.count("blob")
            for _ in range(20):
                await asyncio.sleep(0.01)
            assert h.app.calls.count("blob") == before
            assert answered < sent // len(http("GET", "/blob"))  # fewer answers than requests
        finally:
            sock.close()

    run(scenario, limits)


def test_a_client_that_stops_reading_is_closed_after_the_idle_timeout() -> None:
    limits = Limits(max_unsent=16 << 10, idle_timeout=0.5, head_timeout=5.0)

    async def scenario(h: Harness) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", h.port))
            batch = http("GET", "/blob") * 100
            with contextlib.suppress(BlockingIOError, ConnectionError):
                for _ in range(10000):
                    sock.send(batch)
                    await asyncio.sleep(0)
            await until(lambda: h.server.refused["unread"] == 1, "the unread client to be closed")
        finally:
            sock.close()

    run(scenario, limits)


def test_pipelined_bytes_behind_a_busy_request_are_bounded() -> None:
    limits = Limits(max_head=4096)

    async def scenario(h: Harness) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", h.port))
            await loop.sock_sendall(sock, http("GET", "/slow"))
            await until(lambda: len(h.app.held) == 1, "the held request")
            # a large pipelined body behind it is not read while /slow is answered
            big = http("PUT", "/big", b"q" * 5_000_000)
            sent = 0
            last_progress = loop.time()
            while sent < len(big) and loop.time() - last_progress < 0.5:
                try:
                    sent += sock.send(big[sent : sent + 65536])
                    last_progress = loop.time()
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            assert sent < len(big)
            assert h.server.buffered <= limits.max_head + (256 << 10)
            h.app.release()
            await loop.sock_sendall(sock, big[sent:])
            data = b""
            while data.count(b"HTTP/1.1 200") < 2:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), READ_TIMEOUT)
                assert chunk
                data += chunk
            assert h.app.calls == ["GET /slow", "PUT /big"]
        finally:
            sock.close()

    run(scenario, limits)


def test_buffered_bytes_are_released_when_connections_go() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(http("PUT", "/big", headers=("Content-Length: 100000",)) + b"x" * 50000)
        await until(lambda: h.server.buffered >= 50000, "the partial body to be counted")
        c.close()
        await until(lambda: h.server.buffered == 0, "the partial body to be released")
        c = await h.connect()
        await c.send(b"GET /echo HTTP/1.1\r\nX-Partial: " + b"h" * 2000)
        await until(lambda: h.server.buffered >= 2000, "the partial head to be counted")
        c.close()
        await until(lambda: h.server.buffered == 0, "the partial head to be released")

    run(scenario)


def test_requests_are_frozen_request_instances() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        assert (
            await c.request(http("PUT", "/echo?a=1", b"xyz", headers=("X-A: 1",)))
        ).status == 200
        (request,) = h.app.requests
        assert type(request) is Request
        assert request == Request(
            "PUT",
            "/echo?a=1",
            "/echo",
            "a=1",
            request.headers,
            b"xyz",
            False,
            request.remote,
        )
        assert request.headers["x-a"] == "1" and request.headers["content-length"] == "3"
        with pytest.raises(dataclasses.FrozenInstanceError):
            request.body = b"other"  # type: ignore[misc]

    run(scenario)


def test_100_continue_for_a_pipelined_request_comes_after_the_answer_before_it() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(
            http("GET", "/slow")
            + http("PUT", "/echo", headers=("Content-Length: 4", "Expect: 100-continue"))
        )
        await until(lambda: len(h.app.held) == 1, "the first request")
        h.app.release()
        assert (await c.answer()).json() == {"slow": "/slow"}
        assert (await c.answer()).status == 100
        assert (await c.request(b"body")).json()["body"] == "body"

    run(scenario)


@both_loops
def test_write_backpressure_pauses_and_resumes_in_order() -> None:
    limits = Limits(max_unsent=16 << 10)

    async def scenario(h: Harness) -> None:
        seen = [-1]

        def answered() -> int:
            """The count of answers, once it has stopped growing (else -1)."""
            now = h.app.calls.count("blob")
            stable, seen[0] = now == seen[0], now
            return now if stable else -1

        c = await h.connect(rcvbuf=4096)
        n = 2000  # 16 MiB of answers: more than the sockets' buffers hold
        await c.send(b"".join(http("GET", f"/blob?{i}") for i in range(n)))
        await until(lambda: h.server.unsent() > 0, "answers to wait for the client")
        await until(lambda: h.app.calls.count("blob") == answered(), "the answers to stop")
        assert h.app.calls.count("blob") < n
        assert h.server.unsent() <= limits.max_unsent + 8300
        for _ in range(n):  # now the client reads: everything comes, in order
            answer = await c.answer()
            assert answer.status == 200 and len(answer.body) == 8192
        assert h.app.calls.count("blob") == n
        await c.assert_open()

    run(scenario, limits)


def test_peers_are_not_refused_for_the_clients_buffered_bytes() -> None:
    limits = Limits(max_head=4096, max_buffered=200_000)

    async def scenario(h: Harness) -> None:
        peer = await h.connect()
        await peer.send(stream_head())
        await until(lambda: h.server.peers == 1, "the peer link")
        filler = await h.connect()
        await filler.send(
            http("PUT", "/big", headers=("Content-Length: 1000000",)) + b"f" * 199_500
        )
        await until(lambda: h.server.buffered >= 199_500, "the filler's bytes")
        # each of the peer's lines would pass the bound: a peer is not refused...
        for i in range(50):
            line = b"%04d" % i + b"p" * 995 + b"\n"
            await peer.send(b"%x\r\n%s\r\n" % (len(line), line))
        await until(lambda: len(h.app.lines) == 50, "the peer's lines")
        # ...a client is
        client = await h.connect()
        await client.send(http("PUT", "/big", b"c" * 20_000))
        assert_error(await client.answer(), 503, "server_busy")
        assert h.server.peers == 1 and h.server.refused["server_busy"] == 1

    run(scenario, limits)


def test_a_connection_over_the_cap_that_says_nothing_gets_the_head_timeout() -> None:
    limits = Limits(max_connections=1, peer_reserve=1, head_timeout=0.3, idle_timeout=30.0)

    async def scenario(h: Harness) -> None:
        first = await h.connect()
        assert (await first.request(http("GET", "/echo"))).status == 200
        silent = await h.connect()
        await until(lambda: h.server.pending == 1, "the pending connection")
        await silent.assert_closed()  # closed after head_timeout, not idle_timeout
        assert h.server.refused["idle"] == 1
        await first.assert_open()

    run(scenario, limits)


@both_loops
def test_an_error_answer_survives_a_client_still_sending() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        # the whole over-long body is sent before reading: the 413 must still arrive
        # (the server shuts its side and drains instead of resetting the connection)
        c.writer.write(http("PUT", "/small", b"z" * 2_000_000))
        answer = await c.answer()
        assert_error(answer, 413, "payload_too_large")
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(c.writer.drain(), READ_TIMEOUT)
        await c.assert_closed()
        await until(lambda: h.server.connections == 0, "the connection to close")

    run(scenario)


def test_a_request_cut_short_by_the_client_is_dropped() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(b"PUT /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        await until(lambda: h.server.buffered > 0, "the partial request")
        c.writer.write_eof()
        await c.assert_closed()
        assert h.app.calls == []
        await until(lambda: h.server.buffered == 0, "the partial request to be released")

    run(scenario)


def test_head_requests_get_the_head_only() -> None:
    async def scenario(h: Harness) -> None:
        c = await h.connect()
        answer = await c.request(http("GET", "/echo"))
        length = len(answer.body)
        await c.send(http("HEAD", "/echo"))
        answer = await c.answer(head=True)
        assert (
            answer.status == 200 and int(answer.headers["content-length"]) == length + 1
        )  # "HEAD"
        await c.send(http("HEAD", "/nowhere"))
        answer = await c.answer(head=True)
        assert answer.status == 404 and int(answer.headers["content-length"]) > 0
        await c.assert_open()  # no stray body bytes were sent

    run(scenario)


def test_chunk_trailers_are_bounded() -> None:
    limits = Limits(max_head=4096)

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        await c.send(http("PUT", "/big", headers=("Transfer-Encoding: chunked",)))
        await c.send(b"3\r\nabc\r\n0\r\nX-Trailer: ")  # a trailer that never ends
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < 10 << 20 and not (c.reader._buffer or c.reader.at_eof()):  # type: ignore[attr-defined]
                c.writer.write(b"t" * 1000)
                sent += 1000
                await asyncio.wait_for(c.writer.drain(), READ_TIMEOUT)
                await asyncio.sleep(0)
        assert sent < 1 << 20, "the server kept reading a trailer that never ends"
        body = assert_error(await c.answer(), 400, "bad_request")
        assert "trailers" in body["message"]
        await c.assert_closed()

    run(scenario, limits)


def test_a_request_target_over_the_head_limit_gets_414() -> None:
    """A URL longer than a whole head may be is refused as such (414), not as
    headers (431), whether its end arrives or not: the client learns what to shorten."""
    limits = Limits(max_head=4096, head_timeout=5.0)

    async def scenario(h: Harness) -> None:
        c = await h.connect()
        over = http("GET", "/echo?" + "q" * 5000)
        assert_error(await c.request(over), 414, "uri_too_long")
        await c.assert_closed()
        c = await h.connect()
        with contextlib.suppress(ConnectionError):
            await c.send(b"GET /echo?" + b"q" * 100_000)  # the target never ends
        assert_error(await c.answer(), 414, "uri_too_long")
        await c.assert_closed()

    run(scenario, limits)
