"""The client-facing hot path, without sockets: HTTP parsing, the key routes, the peer codec.

    python -m pytest bench/bench_http.py

- `HttpProtocol` (kvcluster/server/fasthttp.py) is fed one keep-alive GET's bytes
  through a fake transport that collects what it writes: parsing, routing to
  `KeyRoutes.get`, the read and the answer's serialization, one request per round.
- `KeyRoutes.get` alone, for a serializable read (answered without a coroutine).
- A PUT's validation up to the proposal: the key check, the JSON body, the value
  check and the client session (kvcluster/server/operations.py).
- The peer codec (kvcluster/server/codec.py): one AppendEntries batch of 64
  entries carrying 64-byte values, encoded and decoded.

The node is a single-member, memory-storage `NodeServer` that is never started:
no servers, no timers, no loop. Its core is ticked past an election timeout
once so that it leads, and every answer carries the leader header as a real
leader's would.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kvcluster.raft import Entry, EntryKind, Message, MessageType
from kvcluster.server.api import make_app
from kvcluster.server.codec import decode_batch, encode_batch
from kvcluster.server.config import NodeConfig
from kvcluster.server.fasthttp import HttpProtocol, HttpServer, Request, Response
from kvcluster.server.key_routes import KeyRoutes
from kvcluster.server.node import NodeServer
from kvcluster.server.operations import (
    LEADER_HEADER,
    body_limit,
    check_key,
    check_value,
    dump,
    json_object,
    with_session,
)

ADDRESS = "http://127.0.0.1:2379"
KEY = "key7"
VALUE = "v" * 64
BATCH = 64


def leader_node(keys: int = 16) -> NodeServer:
    """A single-member node that leads and holds `keys` keys (key0..), each once written."""
    config = NodeConfig(name="n1", token="bench", initial_members={"n1": ADDRESS}, seed=0)
    node = NodeServer(config)
    node.core.tick(time.monotonic() + 100.0)  # past any election timeout: it elects itself
    assert node.core.is_leader and node.leader_address() == ADDRESS
    for i in range(keys):
        node.kv.apply(i + 1, {"op": "put", "key": f"key{i}", "value": VALUE})
    return node


def expected_get_body(node: NodeServer, key: str) -> bytes:
    """What a GET of `key` must answer, built from the store rather than the route."""
    item = node.kv.get(key)
    assert item is not None
    body = {
        "key": key,
        "value": item.value,
        "create_revision": item.create_revision,
        "mod_revision": item.mod_revision,
        "version": item.version,
        "revision": node.kv.revision,
    }
    assert item.to_dict() | {"revision": node.kv.revision} == body
    return dump(body)


class CollectingTransport(asyncio.Transport):
    """A connection's transport that keeps what is written instead of sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: HttpProtocol skips TCP_NODELAY

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_http_get(benchmark: Any) -> None:
    """One serializable GET on a keep-alive connection: bytes in, the whole answer out."""
    node = leader_node()
    server = HttpServer(KeyRoutes(node), make_app(node), max_body=body_limit(node))
    protocol = HttpProtocol(server)
    transport = CollectingTransport()
    protocol.connection_made(transport)
    request = (
        f"GET /v1/kv/{KEY}?consistency=serializable HTTP/1.1\r\n"
        "Host: 127.0.0.1:2379\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    body = expected_get_body(node, KEY)
    expected = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{LEADER_HEADER}: {ADDRESS}\r\n\r\n"
    ).encode() + body
    written = transport.written

    def get_once() -> None:
        protocol.data_received(request)
        assert written == [expected]
        written.clear()

    benchmark(get_once)
    assert not transport.closed and not protocol._buf  # kept alive, nothing left over
    benchmark.extra_info["request_bytes"] = len(request)
    benchmark.extra_info["response_bytes"] = len(expected)


def test_key_routes_get(benchmark: Any) -> None:
    """KeyRoutes.get for a serializable read: key, query argument, read, JSON answer."""
    node = leader_node()
    routes = KeyRoutes(node)
    path = f"/v1/kv/{KEY}"
    query = "consistency=serializable"
    request = Request("GET", f"{path}?{query}", path, query, "HTTP/1.1", {}, [])
    expected = Response(200, expected_get_body(node, KEY), [(LEADER_HEADER, ADDRESS)])

    def get_once() -> None:
        response = routes.get(request)
        assert response == expected

    benchmark(get_once)


def test_put_validation(benchmark: Any) -> None:
    """A PUT with a session, up to the proposal: key, JSON body, value, client_id and seq."""
    node = leader_node(keys=0)
    raw = dump({"value": VALUE, "client_id": "c0ffee00c0ffee00", "seq": 41})
    expected = {
        "op": "put",
        "key": KEY,
        "value": VALUE,
        "client_id": "c0ffee00c0ffee00",
        "seq": 41,
    }

    def validate() -> dict[str, Any]:
        key = check_key(node, KEY)
        body = json_object(raw, required=True)
        command = {"op": "put", "key": key, "value": check_value(node, body)}
        return with_session(body, command)

    def validate_once() -> None:
        assert validate() == expected

    benchmark(validate_once)
    benchmark.extra_info["body_bytes"] = len(raw)


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
