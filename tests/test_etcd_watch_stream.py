"""The /v3/watch handler (server/etcd_watch.py) on a real HttpServer, in one process.

Between the node layer's cursors and a real socket: a client that reads
slowly gets every event, in order, while the node holds no more than the
connection's max_unsent for it; a client that closes its connection ends its
watches. The node here is a real KVStore that the test applies commands to,
standing where the driver's node is (the handler reads only `node.kv`), and
the test calls `applied()` as the driver's on_applied hook does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from types import SimpleNamespace
from typing import Any

from etcd_helpers import b64
from loops import both_loops, run_loop
from mvcc_helpers import Store, put
from test_http_server import READ_TIMEOUT, TOKEN, http, listening_socket, until

from kvcluster.server import etcd_wire as wire
from kvcluster.server.etcd_watch import EtcdWatches
from kvcluster.server.http import HttpServer, Limits, Route


class Node:
    """What the handler needs of the driver: the node's store, and the hook it sets."""

    def __init__(self) -> None:
        self.store = Store()
        self.node = SimpleNamespace(kv=self.store.kv)
        self.on_applied: Any = None


async def serve(limits: Limits) -> tuple[HttpServer, EtcdWatches, Node, int]:
    node = Node()
    watches = EtcdWatches(
        node,  # type: ignore[arg-type]
        lambda revision: wire.header(1, 2, revision, 3),
        wire.Limits(),
        lambda reply, exc: reply(exc.status, exc.body(), ()),
    )
    assert node.on_applied == watches.applied

    def router(method: str, path: str) -> Route | int | None:
        if path == "/v3/watch":
            return Route(watches.watch) if method == "POST" else 405
        return None

    server = HttpServer(router, token=TOKEN, limits=limits)
    sock = listening_socket()
    await server.listen([sock])
    return server, watches, node, sock.getsockname()[1]


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), READ_TIMEOUT))[:-2], 16)
    data = await asyncio.wait_for(reader.readexactly(size + 2), READ_TIMEOUT)
    assert data.endswith(b"\n\r\n") and data.count(b"\n") == 2  # one message per chunk
    message: dict[str, Any] = json.loads(data)["result"]
    return message


@both_loops
def test_a_slow_reader_gets_everything_in_order_and_the_node_holds_little_for_it() -> None:
    limits = Limits(max_unsent=32 << 10, idle_timeout=60.0)
    n = 400
    value = "v" * 2000  # 400 puts of 2 kB: far more than max_unsent and the socket buffers

    async def main() -> None:
        server, watches, node, port = await serve(limits)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
            body = json.dumps({"create_request": {"key": b64("s/"), "range_end": b64("s0")}})
            writer.write(http("POST", "/v3/watch", body.encode()))
            assert b"Transfer-Encoding: chunked" in await read_head(reader)
            assert (await read_message(reader))["created"] is True
            # Small kernel buffers on both ends, so that the unread bytes stay in the node.
            (conn,) = server._connections
            assert conn.transport is not None
            conn.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
            peak = 0
            (stream,) = watches.sinks
            sink = watches.sinks[stream]
            waited = 0
            for i in range(n):  # the node applies, the client reads nothing meanwhile
                node.store(put(f"s/{i % 7}", f"{i}:{value}"))
                watches.applied()
                peak = max(peak, server.unsent())
                waited += not sink.writable
                await asyncio.sleep(0)
            assert waited > n // 2  # the client's unread bytes held the rest back
            assert peak <= limits.max_unsent + (8 << 10), peak  # at most one message over
            assert len(stream) == 1
            got: list[int] = []
            while len(got) < n:
                message = await read_message(reader)
                got += [int(e["kv"]["mod_revision"]) for e in message["events"]]
            assert got == list(range(1, n + 1))  # every one, in order, once
            assert server.refused["unread"] == 0
            writer.close()
            await until(lambda: not watches.sinks, "the watch to end with its connection")
            assert watches.hub.watchers == 0 and not watches.hub.streams
        finally:
            sock.close()
            server.close()

    run_loop(main())


@both_loops
def test_closing_the_connection_ends_the_watches_and_bad_bodies_are_400s() -> None:
    async def main() -> None:
        server, watches, node, port = await serve(Limits())
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            creates = b"".join(
                json.dumps({"create_request": {"key": b64(k), "prev_kv": True}}).encode()
                for k in ("a", "b")
            )
            writer.write(http("POST", "/v3/watch", creates))
            await read_head(reader)
            assert [(await read_message(reader)).get("watch_id", "0") for _ in "ab"] == ["0", "1"]
            node.store(put("a", "1"))
            node.store(put("a", "2"))
            watches.applied()
            message = await read_message(reader)
            values = [base64.b64decode(e["kv"]["value"]) for e in message["events"]]
            assert values == [b"1", b"2"]
            assert base64.b64decode(message["events"][1]["prev_kv"]["value"]) == b"1"
            assert watches.hub.watchers == 2
            writer.write_eof()  # as etcd3gw cancels: shutdown of its side
            await until(lambda: not watches.sinks, "the watches to end")
            assert watches.hub.watchers == 0
            writer.close()

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(http("POST", "/v3/watch", b'{"create_request": {"key": "!!"}}'))
            head = await read_head(reader)
            assert head.startswith(b"HTTP/1.1 400") and b"chunked" not in head
            assert not watches.sinks
            writer.close()
        finally:
            server.close()

    run_loop(main())
