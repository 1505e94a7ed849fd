"""What a route sees of a request, and how it answers: the stack's API types.

A router maps (method, path) to a `Route`; the route's handler gets a frozen
`Request` and a `Reply` callable, and answers exactly once, now or later
(after awaits, from a callback). The routes layer imports these names and
`errors.error_body`; nothing here knows about keys or Raft.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, make_dataclass
from typing import TypeAlias, cast


@dataclass(frozen=True, slots=True)
class Request:
    """One complete request (for a streamed route: its head, with an empty body)."""

    method: str
    target: str  # as sent (percent-encoded path + "?" + query)
    path: str  # percent-encoded path, no query
    query: str  # raw query string ("" if none)
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    peer: bool  # the request carried the cluster token
    remote: str  # the client's address, for logs


# A frozen dataclass's __init__ sets each field through object.__setattr__:
# 0.9 us for Request's eight, a tenth of a small request's whole cost here.
# The stack builds the same fields on an unfrozen twin (same slots, 0.2 us)
# and makes it a Request; handlers get a true, frozen Request.
_Twin = make_dataclass("_Twin", [(f.name, f.type) for f in fields(Request)], slots=True)


def new_request(
    method: str,
    target: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    peer: bool,
    remote: str,
) -> Request:
    twin = _Twin(method, target, path, query, headers, body, peer, remote)
    twin.__class__ = Request
    return cast(Request, twin)


Reply: TypeAlias = Callable[[int, bytes, Sequence[tuple[str, str]]], None]
"""`reply(status, json_body, extra_headers)`: answers its request, exactly once,
at once or later. The stack adds Content-Type: application/json (unless the
first extra header is a Content-Type of the route's own), Content-Length
and Connection; a second call is ignored (and logged), a call after the
connection is gone does nothing. `streaming.start_stream(reply, ...)` answers
with a stream instead (chunk by chunk, for as long as the route likes)."""


@dataclass(frozen=True, slots=True)
class Route:
    """How one (method, path) is served.

    `lines`: the body is a stream of newline-terminated lines (a peer link: one
    long chunked POST). Each complete line, without its newline, is passed as
    it arrives; `handler` is called when the body ends. `max_body` then bounds
    one line, and there is no body deadline. Only for token routes.
    """

    handler: Callable[[Request, Reply], None]
    max_body: int = 64 << 10
    token: bool = False
    lines: Callable[[Request, bytes], None] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_body, bool) or not isinstance(self.max_body, int):
            raise ValueError("Route.max_body must be an integer")
        if self.max_body < 0:
            raise ValueError("Route.max_body must not be negative")
        if self.lines is not None and not self.token:
            raise ValueError("a streamed (lines) route must be a token route")


Router: TypeAlias = Callable[[str, str], "Route | int | None"]
"""`router(method, path)`: the Route; None for a JSON 404; an int (4xx or 5xx)
for that status as a JSON error, e.g. 405 when the path exists but not the
method. A router that raises or answers anything else gets a logged 500."""
