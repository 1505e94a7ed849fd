"""The errors a kvcluster client raises.

Every error is a `KvClusterError`. What matters most after a failed write is
whether it may still take effect, so every error says so in `known_outcome`:

- `RequestError`: the cluster rejected the request (HTTP 4xx: a bad key, a value
  too large, a missing token...). Retrying the same request will fail again.
- `Unavailable`: the client gave up, and the request certainly did NOT take
  effect (every attempt failed before it could: connection refused, 503 from a
  node without a leader...). Retrying later is safe.
- `OutcomeUnknown`: the client gave up, and at least one attempt may have taken
  effect (a timeout after the request was sent, a 504, a connection dropped
  mid-request, an internal error in a node). The write may be applied now,
  later, or never: read the key to find out before deciding to write again.

Reads have no side effects, so a read that gives up always raises `Unavailable`.

- `Compacted`: a watch (or read) from a revision that compaction has removed;
  nothing took effect. Start again from `compact_revision` or later.
"""

from __future__ import annotations

__all__ = ["Compacted", "KvClusterError", "OutcomeUnknown", "RequestError", "Unavailable"]


class KvClusterError(Exception):
    """Base class of every kvcluster client error.

    `known_outcome` is True when the request is known NOT to have taken effect
    (or to have had no effect to take: a read), False when it may have.
    """

    known_outcome: bool = False

    def __init__(self, message: str, *, known_outcome: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if known_outcome is not None:
            self.known_outcome = known_outcome


class RequestError(KvClusterError):
    """The cluster rejected the request as wrong (HTTP 4xx); it was not retried.

    `status` is the HTTP status, `error` the server's error code (e.g.
    "bad_request", "value_too_large", "unauthorized") and `server_message` its
    explanation. `known_outcome` is True unless an earlier attempt of the same
    request may have taken effect (say it timed out, and the retry was then
    refused because the first attempt had already done the job).
    """

    known_outcome = True

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error: str,
        server_message: str = "",
        endpoint: str | None = None,
        known_outcome: bool = True,
    ) -> None:
        super().__init__(message, known_outcome=known_outcome)
        self.status = status
        self.error = error
        self.server_message = server_message
        self.endpoint = endpoint


class _GaveUp(KvClusterError):
    """The client retried until its deadline; `failures` says what each node last answered."""

    def __init__(
        self,
        message: str,
        *,
        op: str = "",
        attempts: int = 0,
        failures: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.op = op
        self.attempts = attempts
        self.failures: dict[str, str] = dict(failures or {})


class Unavailable(_GaveUp):
    """Gave up; the request certainly did not take effect, so it is safe to retry later."""

    known_outcome = True


class OutcomeUnknown(_GaveUp):
    """Gave up; the write may have taken effect (now or later). Read before writing again."""

    known_outcome = False


class Compacted(KvClusterError):
    """The history from `revision` on is gone (compacted); `compact_revision` is
    the oldest revision still kept, the earliest a watch may start from."""

    known_outcome = True

    def __init__(self, message: str, *, compact_revision: int, revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision
        self.revision = revision
