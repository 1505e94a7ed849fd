"""Server-side TLS for one connection, on memory buffers (`ssl.MemoryBIO`).

Why not `loop.start_tls`: uvloop starts reading a new connection right after
`connection_made` returns, whatever the protocol asked, so the client's first
TLS record could reach the HTTP parser before `start_tls` took the transport
over (seen: most handshakes failed). And a server created with `ssl=` calls
`connection_made` only after the handshake, so connections still shaking hands
would escape the connection limits. Here the connection owns the bytes from
the first one: it is admitted and counted at accept, hands what arrives to
`receive`, and writes through this object as through its transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, Final

_READ: Final = 256 << 10  # plaintext taken from the TLS layer at once


class TlsTransport:
    """A plain transport with TLS on top, to the connection it is given to."""

    __slots__ = ("_in", "_out", "_plain", "_ssl", "handshaken")

    def __init__(self, plain: asyncio.Transport, context: ssl.SSLContext) -> None:
        self._plain = plain
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self.handshaken = False

    def receive(self, data: bytes) -> bytes:
        """What arrived, decrypted (b"" while shaking hands). ssl.SSLError if
        the handshake failed (an untrusted certificate, not TLS at all) or a
        record is corrupt: the connection must then be aborted."""
        self._in.write(data)
        if not self.handshaken:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return b""
            except ssl.SSLError:
                self._flush()  # the alert: the client learns why (an unknown CA, no common version)
                raise
            self.handshaken = True
        chunks = []
        while True:
            try:
                chunk = self._ssl.read(_READ)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break  # needs more bytes, or the client said close_notify (its EOF follows)
            if not chunk:
                break
            chunks.append(chunk)
            if not self._in.pending and not self._ssl.pending():
                break  # all taken: asking again would only raise SSLWantReadError (~1.5 us)
        self._flush()  # what reading produced (session tickets, alerts)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def peer_certificate(self) -> bytes | None:
        """The client's certificate (DER) as the handshake verified it, if it showed one."""
        return self._ssl.getpeercert(binary_form=True)

    def _flush(self) -> None:
        data = self._out.read()
        if data and not self._plain.is_closing():
            self._plain.write(data)

    # -------------------------------------------------------- what a transport does

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._plain.is_closing():
            return
        self._ssl.write(data)
        self._flush()

    def can_write_eof(self) -> bool:
        return self._plain.can_write_eof()

    def write_eof(self) -> None:
        """close_notify, then the TCP half-close."""
        self._close_notify()
        self._plain.write_eof()

    def close(self) -> None:
        self._close_notify()
        self._plain.close()

    def abort(self) -> None:
        self._plain.abort()

    def is_closing(self) -> bool:
        return self._plain.is_closing()

    def pause_reading(self) -> None:
        self._plain.pause_reading()

    def resume_reading(self) -> None:
        self._plain.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._plain.get_write_buffer_size() + self._out.pending

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._plain.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert() if self.handshaken else default
        return self._plain.get_extra_info(name, default)

    def _close_notify(self) -> None:
        if self.handshaken and not self._plain.is_closing():
            # SSLWantReadError: the client's close_notify is not awaited.
            with contextlib.suppress(ssl.SSLError):
                self._ssl.unwrap()
            self._flush()
