"""What one HTTP server will hold for its clients, and for how long.

Every byte a client or peer can make the node keep, and every second it can
make the node wait, is bounded by one of these numbers (issue #11: thirty
half-sent 9 MB bodies once held 258 MiB on a leader, and an idle connection
could live for an hour). The integrator sizes the connection counts from
RLIMIT_NOFILE so that a flood of clients never takes the descriptors the node
needs for its WAL, snapshots and peer links.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on input, per connection and per server (sizes in bytes, times in seconds)."""

    max_head: int = 64 << 10  # request line + headers; over it: 431, close
    head_timeout: float = 10.0  # from a request's first byte to its complete head: 408, close
    idle_timeout: float = 60.0  # a keep-alive connection with no request started: closed
    body_timeout: float = 30.0  # from the end of the head to the end of the body: 408, close
    max_buffered: int = 64 << 20  # unfinished requests' bytes across all connections: 503
    max_connections: int = 1000  # client connections
    peer_reserve: int = 64  # more connections, kept only for requests carrying the token
    max_unsent: int = 1 << 20  # answers the client has not read: stop reading it

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                if f.name == "peer_reserve" and value == 0:
                    continue
                raise ValueError(f"Limits.{f.name} must be a positive number, not {value!r}")
        for name in ("max_head", "max_buffered", "max_connections", "peer_reserve", "max_unsent"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"Limits.{name} must be an integer")
        if self.max_buffered < self.max_head:
            raise ValueError("Limits.max_buffered must be at least max_head")

    @property
    def sweep_interval(self) -> float:
        """How often the server's one timer checks every connection's deadline:
        a quarter of the shortest timeout (so a deadline is late by at most
        that much), between 10 ms and 0.5 s."""
        shortest = min(self.head_timeout, self.idle_timeout, self.body_timeout)
        return min(0.5, max(0.01, shortest / 4))
