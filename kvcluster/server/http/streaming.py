"""Streamed responses: a body written piece by piece, long after the head.

Why: a watch (etcd's POST /v3/watch) answers with a head at once and then one
JSON message per HTTP chunk for as long as the client stays, so the answer's
length is never known and no single `reply(status, body)` can carry it.

A route that wants to stream calls `start_stream(reply, ...)` instead of
`reply(...)`; the head goes out at once with `Transfer-Encoding: chunked`, and
every `write(data)` is one chunk (to an HTTP/1.0 client: raw bytes, and the
connection closes at the end, which is that version's only framing). Nothing
else is answered on the connection while the stream is open; a pipelined
request waits for `end()`.

Bounded: a stream never holds more than the connection's `max_unsent` bytes
plus one write. While the client leaves more than that unread, `writable` is
False and the producer must wait for `on_drain`; a `write` made anyway cancels
the stream (the connection is dropped and counted as "unread"), and a client
that reads nothing for `idle_timeout` is dropped by the server's sweep. A
producer that pulls what it sends from somewhere else (a watch reads the
store's history) therefore never buffers anything of its own.

The stream ends when the route calls `end()`, or else when the connection
goes: the client closed it (its end of the connection, even half: a client
that sends nothing more on a streamed request is gone), it did not read, or
the server closed. Then `on_close(reason)` is called, once, with "client",
"unread" or "server"; it is not called for the route's own `end()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .connection import ServerConnection

log = logging.getLogger("kvcluster.server.http")

CLIENT_CLOSED: Final = "client"
UNREAD: Final = "unread"
SERVER_CLOSED: Final = "server"

OnClose = Callable[[str], None]
OnDrain = Callable[[], None]


class ResponseStream:
    """One streamed answer (see the module docstring). Made by `start_stream`."""

    __slots__ = ("_conn", "chunked", "head_only", "on_close", "on_drain", "open", "written")

    def __init__(
        self,
        conn: ServerConnection | None,
        *,
        chunked: bool,
        head_only: bool,
        on_close: OnClose | None,
        on_drain: OnDrain | None,
    ) -> None:
        self._conn = conn
        self.chunked = chunked
        self.head_only = head_only  # the answer to a HEAD request: writes send nothing
        self.on_close = on_close
        self.on_drain = on_drain
        self.open = conn is not None  # False: ended (or the connection was gone already)
        self.written = 0  # body bytes written, framing excluded

    @property
    def writable(self) -> bool:
        """Open, and the client reads what it is sent: a write now is taken."""
        conn = self._conn
        return self.open and conn is not None and not conn.write_paused

    def unsent(self) -> int:
        """Bytes written to the connection that its client has not taken yet."""
        conn = self._conn
        if not self.open or conn is None or conn.transport is None:
            return 0
        return conn.transport.get_write_buffer_size()

    def write(self, data: bytes) -> bool:
        """Send `data` as one chunk; False if the stream is over (nothing sent).

        A write while `writable` is False cancels the stream: the client has
        not read what it was sent, and nothing more is buffered for it.
        """
        conn = self._conn
        if not self.open or conn is None:
            return False
        if not data:
            return True  # an empty chunk would end the stream
        return conn.stream_write(self, data)

    def end(self) -> None:
        """Finish the answer (the last chunk); the connection goes on with the
        next request, or closes if the request asked for it."""
        conn = self._conn
        if self.open and conn is not None:
            conn.stream_end(self)

    def gone(self, reason: str) -> None:
        """The connection ended the stream (called by the connection)."""
        if not self.open:
            return
        self.open = False
        callback, self.on_close, self.on_drain = self.on_close, None, None
        if callback is not None:
            try:
                callback(reason)
            except Exception:
                log.exception("a stream's on_close failed")

    def drained(self) -> None:
        """The client has read enough: writes are taken again (called by the connection)."""
        if self.open and self.on_drain is not None:
            try:
                self.on_drain()
            except Exception:
                log.exception("a stream's on_drain failed")


def start_stream(
    reply: object,
    status: int = 200,
    headers: Sequence[tuple[str, str]] = (),
    *,
    on_close: OnClose | None = None,
    on_drain: OnDrain | None = None,
) -> ResponseStream:
    """Answer the request `reply` belongs to with a stream (instead of calling it).

    The head is written now. If the connection is gone already, the stream
    comes back with `open` False and `on_close` is never called: check it.
    """
    starter = getattr(reply, "start_stream", None)
    if starter is None:
        raise TypeError("start_stream needs the Reply the HTTP stack gave the handler")
    stream: ResponseStream = starter(status, headers, on_close, on_drain)
    return stream
