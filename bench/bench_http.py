"""The client-facing hot path: HTTP framing stacks side by side, and the peer codec.

    python -m pytest bench/bench_http.py -o python_files='bench_*.py'
    python -m pytest bench/bench_http.py -o python_files='bench_*.py' -k stack

Two HTTP/1.1 stacks answer the same requests with the same handler work (a
fixed JSON answer with the leader header), so the difference between them is
the stack: parsing, the request object, dispatch and the answer's framing.

- `httptools`: kvcluster/server/http (llhttp via httptools, on asyncio.Protocol).
- `h11`: h11's sans-IO state machine on an asyncio.Protocol (pure Python).

The hand-written framing the stack replaced (server/fasthttp.py, deleted after
commit a854043) was measured here side by side before it went: 0.84x
httptools' time per parsed request, 0.92x through loopback; h11 took 7.3x and
4.0x (400 interleaved rounds, medians; see the README).

Per stack:
- `parse_pipelined`: BATCH requests (half GETs, half PUTs with a 64-byte value)
  arrive in one read; all are parsed, dispatched and answered (into a
  transport that keeps what is written). No socket, no loop.
- `parse_one_by_one`: the same BATCH requests, one read each (a client that
  waits for its answer before the next request: the common case).
- `loopback_pipelined`: BATCH requests written at once to a real server on
  127.0.0.1 (uvloop, as the node runs), all answers read back.
- `loopback_sequential`: SEQUENTIAL round trips, one request at a time.

Every stack's answers are checked byte for byte against the same expected bytes
before timing. The loopback rounds include the client's side (the same for
every stack).

On a shared machine, one stack's rounds all run before the next stack's, so
load that comes and goes lands on one stack: for a comparison, run the same
rounds interleaved (stacks in a new random order every round) and read the
medians with their 95% intervals and the ratio to httptools:

    python bench/bench_http.py [ROUNDS]

Also here, unchanged: a PUT's validation up to the proposal, and the peer codec.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import h11
import orjson
import pytest

from kvcluster.node import PUT, Node
from kvcluster.node import Request as NodeRequest
from kvcluster.raft import Entry, EntryKind, Member, Membership, Message, MessageType
from kvcluster.server.codec import decode_batch, encode_batch
from kvcluster.server.http import HttpServer, Limits, Reply, Request, Route
from kvcluster.server.http.connection import ServerConnection
from kvcluster.server.validate import json_object, key_from_path, session_of, value_of

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None  # type: ignore[assignment]

ADDRESS = "http://127.0.0.1:2379"
LEADER_HEADER = "X-Kvcluster-Leader"
KEY = "key7"
VALUE = "v" * 64
BATCH = 64
PIPELINED = 100  # requests per pipelined round
SEQUENTIAL = 20  # round trips per sequential round
TOKEN = "bench"

ANSWER = orjson.dumps(
    {
        "key": KEY,
        "value": VALUE,
        "create_revision": 3,
        "mod_revision": 7,
        "version": 2,
        "revision": 42,
    }
)
ANSWER_HEADERS = [(LEADER_HEADER, ADDRESS)]
PUT_BODY = orjson.dumps({"value": VALUE})


def requests(n: int) -> list[bytes]:
    """n requests as a kvcluster client sends them: half GETs, half PUTs."""
    out = []
    for i in range(n):
        if i % 2:
            head = (
                f"PUT /v1/kv/key{i} HTTP/1.1\r\nHost: 127.0.0.1:2379\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(PUT_BODY)}\r\n\r\n"
            )
            out.append(head.encode() + PUT_BODY)
        else:
            out.append(
                f"GET /v1/kv/key{i}?consistency=serializable HTTP/1.1\r\n"
                "Host: 127.0.0.1:2379\r\nContent-Type: application/json\r\n\r\n".encode()
            )
    return out


EXPECTED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"%s: %s\r\n\r\n%s" % (len(ANSWER), LEADER_HEADER.encode(), ADDRESS.encode(), ANSWER)
)


# ---------------------------------------------------------------------- the three stacks


def httptools_server() -> HttpServer:
    def answer(request: Request, reply: Reply) -> None:
        reply(200, ANSWER, ANSWER_HEADERS)

    route = Route(answer)

    def router(method: str, path: str) -> Route | None:
        return route if path.startswith("/v1/kv/") else None

    return HttpServer(router, token=TOKEN, limits=Limits())


class H11Protocol(asyncio.Protocol):
    """h11's state machine behind the same handler work, as a node would use it."""

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None
        self.request: h11.Request | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self.request = event
                self.body = []
            elif isinstance(event, h11.Data):
                self.body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                # the request as the handler would see it: path, query, headers, body
                assert self.request is not None
                target = self.request.target.decode("latin-1")
                path, _, query = target.partition("?")
                headers = {
                    k.decode("latin-1"): v.decode("latin-1") for k, v in self.request.headers
                }
                body = b"".join(self.body)
                assert path and headers is not None and body is not None and query is not None
                out = conn.send(
                    h11.Response(
                        status_code=200,
                        reason=b"OK",
                        headers=[
                            ("Content-Type", "application/json"),
                            ("Content-Length", str(len(ANSWER))),
                            *ANSWER_HEADERS,
                        ],
                    )
                )
                assert out is not None and self.transport is not None
                out += conn.send(h11.Data(data=ANSWER)) or b""
                out += conn.send(h11.EndOfMessage()) or b""
                self.transport.write(out)
                conn.start_next_cycle()
            else:  # ConnectionClosed, PAUSED: not in this benchmark
                return


class CollectingTransport(asyncio.Transport):
    """A connection's transport that keeps what is written instead of sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def in_process(stack: str) -> tuple[asyncio.Protocol, CollectingTransport, Any]:
    """A connection of `stack` on a collecting transport (and what keeps it alive)."""
    server: Any
    if stack == "httptools":
        server = httptools_server()
        protocol: asyncio.Protocol = ServerConnection(server)
    else:
        server = None
        protocol = H11Protocol()
    transport = CollectingTransport()
    protocol.connection_made(transport)
    return protocol, transport, server


STACKS = ["httptools", "h11"]


@pytest.mark.parametrize("stack", STACKS)
def test_stack_parse_pipelined(benchmark: Any, stack: str) -> None:
    """PIPELINED requests in one read: parsed, dispatched and answered."""
    protocol, transport, _ = in_process(stack)
    data = b"".join(requests(PIPELINED))
    written = transport.written

    def once() -> None:
        protocol.data_received(data)
        assert len(written) == PIPELINED
        written.clear()

    protocol.data_received(data)
    assert written == [EXPECTED] * PIPELINED and not transport.closed
    written.clear()
    benchmark(once)
    benchmark.extra_info.update(requests=PIPELINED, request_bytes=len(data))


@pytest.mark.parametrize("stack", STACKS)
def test_stack_parse_one_by_one(benchmark: Any, stack: str) -> None:
    """PIPELINED requests, one read each (a client waiting for each answer)."""
    protocol, transport, _ = in_process(stack)
    reads = requests(PIPELINED)
    written = transport.written

    def once() -> None:
        for data in reads:
            protocol.data_received(data)
        assert len(written) == PIPELINED
        written.clear()

    once()
    benchmark(once)
    benchmark.extra_info.update(requests=PIPELINED)


# ---------------------------------------------------------------------- loopback


class Loopback:
    """A server of one stack on 127.0.0.1 and one client socket, on a uvloop loop."""

    def __init__(self, stack: str) -> None:
        self.loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
        self.stack = stack
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self.server: Any = None
        self.aserver: asyncio.AbstractServer | None = None
        self.loop.run_until_complete(self._start(listener))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.loop.run_until_complete(self.loop.sock_connect(self.sock, ("127.0.0.1", self.port)))

    async def _start(self, listener: socket.socket) -> None:
        if self.stack == "httptools":
            self.server = httptools_server()
            await self.server.listen([listener])
        else:
            listener.setblocking(False)
            self.aserver = await asyncio.get_running_loop().create_server(
                H11Protocol, sock=listener
            )

    async def exchange(self, data: bytes, expected: int) -> bytes:
        await self.loop.sock_sendall(self.sock, data)
        got = bytearray()
        while len(got) < expected:
            chunk = await self.loop.sock_recv(self.sock, 1 << 20)
            assert chunk, "the server closed the connection"
            got += chunk
        return bytes(got)

    def close(self) -> None:
        self.sock.close()
        if self.stack == "httptools":
            self.server.close()
        elif self.aserver is not None:
            self.aserver.close()
        self.loop.run_until_complete(asyncio.sleep(0.01))
        self.loop.close()


@pytest.fixture(params=STACKS)
def loopback(request: pytest.FixtureRequest) -> Iterator[Loopback]:
    lb = Loopback(request.param)
    yield lb
    lb.close()


def test_stack_loopback_pipelined(benchmark: Any, loopback: Loopback) -> None:
    """PIPELINED requests written at once through loopback; every answer read back."""
    data = b"".join(requests(PIPELINED))
    expected = len(EXPECTED) * PIPELINED
    run = loopback.loop.run_until_complete
    assert run(loopback.exchange(data, expected)) == EXPECTED * PIPELINED

    def once() -> None:
        run(loopback.exchange(data, expected))

    benchmark.pedantic(once, rounds=300, warmup_rounds=20)
    benchmark.extra_info.update(requests=PIPELINED, stack=loopback.stack)


def test_stack_loopback_sequential(benchmark: Any, loopback: Loopback) -> None:
    """SEQUENTIAL round trips through loopback, one request at a time."""
    reads = requests(SEQUENTIAL)
    size = len(EXPECTED)

    async def round_trips() -> None:
        for data in reads:
            await loopback.exchange(data, size)

    run = loopback.loop.run_until_complete
    assert run(loopback.exchange(reads[0], size)) == EXPECTED

    def once() -> None:
        run(round_trips())

    benchmark.pedantic(once, rounds=200, warmup_rounds=20)
    benchmark.extra_info.update(requests=SEQUENTIAL, stack=loopback.stack)


# ---------------------------------------------------------------------- node and codec


def leader_node(keys: int = 16) -> Node:
    """A single-member node layer that leads and holds `keys` keys (key0..)."""
    node = Node("n1", rng=random.Random(0), now=0.0, membership=Membership({"n1": Member(ADDRESS)}))
    node.tick(100.0)  # past any election timeout: it elects itself
    while node.has_ready():
        node.advance(node.ready())
    assert node.is_leader and node.leader_address() == ADDRESS
    for i in range(keys):
        node.kv.apply(i + 1, {"op": "put", "key": f"key{i}", "value": VALUE})
    return node


def test_put_validation(benchmark: Any) -> None:
    """A PUT with a session, as the routes check it: key, JSON body, value, session."""
    raw = orjson.dumps({"value": VALUE, "client_id": "c0ffee00c0ffee00", "seq": 41})

    def validate() -> tuple[str, str, str | None, int | None]:
        key = key_from_path(KEY, 4096)
        body = json_object(raw, required=True)
        return (key, value_of(body, 1 << 20), *session_of(body))

    def validate_once() -> None:
        assert validate() == (KEY, VALUE, "c0ffee00c0ffee00", 41)

    benchmark(validate_once)
    benchmark.extra_info["body_bytes"] = len(raw)


def test_node_layer_put(benchmark: Any) -> None:
    """One PUT through the node layer of a single-node leader: submit, ready,
    advance, apply, answer (no I/O: what the node layer itself costs)."""
    node = leader_node(keys=0)
    ids = iter(range(1, 1 << 62))

    def put() -> None:
        rid = next(ids)
        node.submit(NodeRequest(rid, PUT, KEY, VALUE, "c0ffee00c0ffee00", rid), 100.0)
        answered = False
        while node.has_ready():
            rd = node.ready()
            node.advance(rd)
            answered = answered or any(a.id == rid and a.status == 200 for a in rd.answers)
        assert answered

    benchmark(put)


def append_batch() -> list[Message]:
    """One AppendEntries of 64 entries, each a put with a 64-byte value."""
    entries = [
        Entry(1001 + i, 3, EntryKind.NORMAL, {"op": "put", "key": f"key{i}", "value": VALUE})
        for i in range(BATCH)
    ]
    message = Message(
        MessageType.APPEND,
        3,
        "n1",
        "n2",
        index=1000,
        log_term=3,
        entries=entries,
        commit=1000,
        incarnation="a1b2c3d4e5f6",
    )
    return [message]


def test_codec_encode(benchmark: Any) -> None:
    batch = append_batch()
    expected = encode_batch(batch)
    assert decode_batch(expected) == batch

    def encode_once() -> None:
        assert encode_batch(batch) == expected

    benchmark(encode_once)
    benchmark.extra_info["entries"] = BATCH
    benchmark.extra_info["batch_bytes"] = len(expected)


def test_codec_decode(benchmark: Any) -> None:
    batch = append_batch()
    wire = encode_batch(batch)
    assert decode_batch(wire) == batch
    first, last = batch[0].entries[0], batch[0].entries[-1]

    def decode_once() -> None:
        (message,) = decode_batch(wire)
        entries = message.entries
        assert len(entries) == BATCH and entries[0] == first and entries[-1] == last

    benchmark(decode_once)
    benchmark.extra_info["entries"] = BATCH
    benchmark.extra_info["batch_bytes"] = len(wire)


# ---------------------------------------------------------------------- interleaved


def _round(kind: str, stack: str) -> tuple[Callable[[], None], Callable[[], None], int]:
    """One round of `kind` for `stack`, its cleanup, and the requests it answers."""
    if kind.startswith("parse"):
        protocol, transport, _keep = in_process(stack)
        written = transport.written
        reads = requests(PIPELINED)
        data = b"".join(reads)
        pipelined = kind == "parse_pipelined"

        def parse() -> None:
            if pipelined:
                protocol.data_received(data)
            else:
                for one in reads:
                    protocol.data_received(one)
            assert len(written) == PIPELINED
            written.clear()

        parse._keep = _keep  # type: ignore[attr-defined]  # the server lives as long as this
        return parse, lambda: None, PIPELINED
    lb = Loopback(stack)
    run = lb.loop.run_until_complete
    if kind == "loopback_pipelined":
        data = b"".join(requests(PIPELINED))
        size = len(EXPECTED) * PIPELINED

        def pipelined_round() -> None:
            run(lb.exchange(data, size))

        return pipelined_round, lb.close, PIPELINED
    reads = requests(SEQUENTIAL)

    async def round_trips() -> None:
        for one in reads:
            await lb.exchange(one, len(EXPECTED))

    return lambda: run(round_trips()), lb.close, SEQUENTIAL


def _median_interval(xs: list[float]) -> tuple[float, float]:
    """A distribution-free 95% interval for the median (order statistics)."""
    xs = sorted(xs)
    n = len(xs)
    half = 1.96 * math.sqrt(n) / 2
    return xs[max(0, math.floor(n / 2 - half))], xs[min(n - 1, math.ceil(n / 2 + half))]


def _ratio_interval(a: list[float], b: list[float], rng: random.Random) -> tuple[float, float]:
    """A bootstrap 95% interval for median(a) / median(b)."""
    ratios = sorted(
        statistics.median(rng.choices(a, k=len(a))) / statistics.median(rng.choices(b, k=len(b)))
        for _ in range(2000)
    )
    return ratios[50], ratios[1949]


def interleaved(rounds: int) -> None:
    stacks = ["httptools", "h11"]
    rng = random.Random(0)
    for kind in (
        "parse_pipelined",
        "parse_one_by_one",
        "loopback_pipelined",
        "loopback_sequential",
    ):
        setups = {stack: _round(kind, stack) for stack in stacks}
        samples: dict[str, list[float]] = {stack: [] for stack in stacks}
        for once, _, _ in setups.values():
            for _ in range(20):  # warm-up
                once()
        order = list(stacks)
        for _ in range(rounds):
            rng.shuffle(order)
            for stack in order:
                once, _, n = setups[stack]
                start = time.perf_counter()
                once()
                samples[stack].append((time.perf_counter() - start) / n * 1e6)
        for _, close, _ in setups.values():
            close()
        base = samples["httptools"]
        print(f"{kind}: {rounds} interleaved rounds, microseconds per request")
        for stack in stacks:
            xs = samples[stack]
            lo, hi = _median_interval(xs)
            ratio = statistics.median(xs) / statistics.median(base)
            rlo, rhi = _ratio_interval(xs, base, rng)
            print(
                f"  {stack:9s} median {statistics.median(xs):7.2f} [{lo:7.2f}, {hi:7.2f}]"
                f"  x httptools {ratio:5.2f} [{rlo:.2f}, {rhi:.2f}]"
            )


if __name__ == "__main__":
    interleaved(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
