"""kvcluster's one HTTP stack: a bounded HTTP/1.1 server and the one internal client.

- `request`: `Request`, `Route`, `Reply`, `Router`: what routes see and do.
- `server`: `HttpServer` (listening, admission, the deadline sweep), and
  `connection`: one connection (llhttp framing on asyncio.Protocol).
- `limits`: `Limits`, every bound the server puts on what clients send.
- `streaming`: `start_stream`, `ResponseStream`: an answer written chunk by
  chunk (a watch), bounded by what the client reads.
- `errors`: `error_body`, the one JSON error envelope.
- `tls`: `TlsTransport`, a connection's server-side TLS on memory buffers.
- `client`: `HttpConnection`, `ConnectionPool`, `open_stream`/`RequestStream`,
  `Response`, `ConnectionFailed`, and `use_tls`/`use_tls_by_default`: which
  calls go over TLS.

This package imports nothing from the rest of kvcluster: it is protocol code.
"""

from .client import (
    ConnectionFailed,
    ConnectionPool,
    HttpConnection,
    RequestStream,
    Response,
    open_stream,
    use_tls,
    use_tls_by_default,
)
from .errors import error_body
from .limits import Limits
from .request import Reply, Request, Route, Router
from .server import HttpServer
from .streaming import ResponseStream, start_stream

__all__ = [
    "ConnectionFailed",
    "ConnectionPool",
    "HttpConnection",
    "HttpServer",
    "Limits",
    "Reply",
    "Request",
    "RequestStream",
    "Response",
    "ResponseStream",
    "Route",
    "Router",
    "error_body",
    "open_stream",
    "start_stream",
    "use_tls",
    "use_tls_by_default",
]
