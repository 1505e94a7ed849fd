"""What a client asks a node, and what the node answers: the node layer's vocabulary.

A `Request` is a client operation as the node layer sees it, already parsed
and validated by whoever received it (the HTTP routes, or a simulated client).
An `Answer` is what goes back. Statuses are HTTP's because that is the wire in
production, and because a client's next move depends on exactly these
distinctions, in the simulator as much as in the real thing:

- 200: done; 404: no such key or member; 409: the store refused the command;
- 503: certainly not applied, retry (no leader, not the leader, not reachable);
- 504: the outcome is unknown (a write may still take effect);
- 307: ask the leader (only for /register, whose caller follows redirects).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..raft import Member

PUT = "put"
DELETE = "delete"
GET = "get"
LIST = "list"
# One page of a list: a store of a million keys, or of large values, is read in
# pages (`more`, then the next from `after` the last key), never in one answer.
LIST_MAX_KEYS = 10_000
LIST_MAX_BYTES = 4 << 20
ADD_MEMBER = "add_member"
REMOVE_MEMBER = "remove_member"
OPEN_SESSION = "open_session"  # a client session for at-most-once writes (kv/sessions.py)
COMMAND = "command"  # a store command given whole in `payload` (the etcd API's writes)
RANGE = "range"  # a store range read with the arguments in `payload` (the etcd API's reads)
LEASE_READ = "lease_read"  # a lease's time-to-live or the list of leases (node/leases.py)

READS = frozenset({GET, LIST, RANGE, LEASE_READ})
WRITES = frozenset({PUT, DELETE, OPEN_SESSION, COMMAND})
OPS = READS | WRITES | {ADD_MEMBER, REMOVE_MEMBER}


@dataclass(slots=True)
class Request:
    """One client operation. `id` is the caller's handle: the answer carries it.

    `key` is the key (get/put/delete), the prefix (list) or the member id
    (add/remove member). `client_id` and `seq` make a retried write apply at
    most once; for open_session, `client_id` is the caller's nonce (seq 0),
    which lets the leader append one entry for all the retries of one open.
    `payload` is the whole store command (op "command") or the arguments of
    a range or lease read (op "range", "lease_read"), already validated by
    whoever received them.
    `forwarded` marks a request another node relayed to us: it is
    never relayed again. `wire` is opaque to the node layer: what the driver
    needs to relay the request to the leader (the HTTP request, or the
    simulator's request object).
    """

    id: int
    op: str
    key: str = ""
    value: str | None = None
    client_id: str | None = None
    seq: int | None = None
    serializable: bool = False
    limit: int | None = None
    member: Member | None = None
    payload: dict[str, Any] | None = None
    forwarded: bool = False
    wire: Any = None

    def command(self) -> dict[str, Any]:
        """The kv command this write appends to the log."""
        if self.op == COMMAND:
            assert self.payload is not None, "a command request carries its command"
            return self.payload
        cmd: dict[str, Any] = {"op": self.op, "key": self.key}
        if self.op == PUT:
            cmd["value"] = self.value
        if self.client_id is not None:
            cmd["client_id"], cmd["seq"] = self.client_id, self.seq
        return cmd

    @property
    def session(self) -> tuple[str, int] | None:
        if self.client_id is None or self.seq is None:
            return None
        return self.client_id, self.seq


@dataclass(slots=True)
class Answer:
    """The node's answer to request `id`.

    `body` is a JSON-able object, or None when `raw` carries a relayed answer
    as the leader sent it. `leader` is the leader's base address as this node
    knows it (or the node a relayed answer came from); `redirect` is the
    leader's base address for a 307.
    """

    id: int
    status: int
    body: dict[str, Any] | None = None
    raw: bytes | None = None
    leader: str | None = None
    redirect: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(slots=True)
class Forward:
    """Relay `request` to the leader `leader` at `address`; report back with
    `Node.forward_answered` or `Node.forward_failed`."""

    request: Request
    leader: str
    address: str


@dataclass(frozen=True, slots=True)
class Failure:
    """An error answer's parts: the status, a code a program can test, and a
    message that tells a person what to do next."""

    status: int
    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


# The failures the node layer itself decides, in one place so that every
# route and the simulator's clients see the same ones.
NO_LEADER = Failure(503, "no_leader", "no leader is elected right now; retry shortly")
NOT_LEADER = Failure(503, "not_leader", "this node is no longer the leader; retry")
NOT_APPLIED = Failure(503, "not_leader", "the entry was replaced by a new leader; retry")
READ_UNCONFIRMED = Failure(503, "no_leader", "no leader could confirm this read; retry")
WRITE_TIMEOUT = Failure(
    504, "timeout", "the write was not committed in time; the outcome is unknown"
)
MEMBERSHIP_BUSY = Failure(
    503, "membership_busy", "another membership change is still committing; retry"
)
# A removed node is on its way out: "shutting_down" tells a client (and
# kvcluster.client) that nothing was applied and another member will serve it.
REMOVED = Failure(
    503,
    "shutting_down",
    "this node was removed from the cluster and is shutting down; send requests to a "
    "current member (GET /v1/members on any of them lists them)",
    {"removed": True},
)
REMOVED_OUTCOME_UNKNOWN = Failure(
    504,
    "timeout",
    "this node was removed from the cluster before the write's outcome was known; the "
    "outcome is unknown",
    {"removed": True},
)


def no_space(used: int, quota: int) -> Failure:
    """A write refused because the store is over its quota (nothing applied): a
    409 like the store's own refusals, so clients report it rather than retry."""
    return Failure(
        409,
        "no_space",
        f"the store holds {used} bytes of keys, values and history, over its quota of "
        f"{quota}: nothing was written. Delete keys or compact the history "
        "(POST /v3/kv/compaction), or restart the nodes with a larger --quota-bytes",
    )


def unreachable(reason: str) -> Failure:
    return Failure(503, "unavailable", f"cannot reach the leader: {reason}; retry")


def leader_silent(reason: str) -> Failure:
    return Failure(504, "timeout", f"the leader did not answer: {reason}; the outcome is unknown")


REMOVED_LIFE = Failure(
    409,
    "member_removed",
    "this node (with this incarnation) was removed from the cluster; to bring it back, "
    "empty its data directory and start it again with --join",
)
