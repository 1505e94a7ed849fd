"""What the client API does, apart from HTTP: validate, replicate, read, forward.

Two servers share these: the lean key routes (`key_routes`) and tornado's
handlers for the other routes (`api`). Everything here raises `ApiError`,
which either server turns into a JSON error response.
"""

from __future__ import annotations

import json
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import orjson

from ..raft import NotLeader
from .http_conn import ConnectionFailed
from .node import NodeServer, NotApplied, ReadFailed

LEADER_HEADER = "X-Kvcluster-Leader"
FORWARDED_HEADER = "X-Kvcluster-Forwarded"
CONSISTENCY = ("linearizable", "serializable")
MAX_SEQ = 1 << 63  # what a 64-bit integer holds on the wire between nodes


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


class BecameLeader(Exception):
    """This node became the leader while the request waited to be forwarded:
    serve it here (forwarding it to ourselves would cost a connection each,
    in a burst, just as the new leader's first rounds need the CPU)."""


def error_body(code: str, message: str, **extra: Any) -> bytes:
    return dump({"error": code, "message": message, **extra})


def dump(body: Any) -> bytes:
    return orjson.dumps(body)


def json_object(raw: bytes, *, required: bool) -> dict[str, Any]:
    """A request body as a JSON object, or an ApiError saying what is wrong with it."""
    if not raw:
        if required:
            raise ApiError(400, "bad_request", "a JSON object body is required")
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_request", f"the body is not valid UTF-8: {exc}") from exc
    except RecursionError as exc:
        raise ApiError(400, "bad_request", "the body is JSON nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, and e.g. an integer of 5000 digits
        raise ApiError(400, "bad_request", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    surrogate = _lone_surrogate(data)
    if surrogate is not None:
        raise ApiError(
            400,
            "bad_request",
            f"the body is not valid Unicode: a string holds the lone surrogate {surrogate}",
        )
    return data


def _lone_surrogate(data: Any) -> str | None:
    """The first lone UTF-16 surrogate in any string of a parsed JSON document.

    JSON's \\ud800 escapes decode to Python strings that cannot be encoded as
    UTF-8. Stored (a member's id, say), one would make every later response
    that includes it fail to encode: a 500 on every node, for good.
    """
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return f"\\u{ord(item[exc.start]):04x}"
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def body_limit(node: NodeServer) -> int:
    """The largest body a key route accepts: a value at the limit takes at most
    6 bytes of JSON per byte (\\u00XX), plus room for the rest of the object."""
    return 8 * node.config.max_value_bytes + (1 << 20)


def check_key(node: NodeServer, key: str) -> str:
    if not key:
        raise ApiError(400, "bad_request", "the key must not be empty: use /v1/kv/<key>")
    size = len(key.encode("utf-8"))
    if size > node.config.max_key_bytes:
        raise ApiError(
            414,
            "key_too_long",
            f"the key is {size} bytes; the limit is {node.config.max_key_bytes}",
        )
    return key


def check_value(node: NodeServer, body: dict[str, Any]) -> str:
    value = body.get("value")
    if value is None:
        raise ApiError(400, "bad_request", 'the body needs a "value": {"value": "..."}')
    if not isinstance(value, str):
        raise ApiError(400, "bad_request", '"value" must be a string')
    limit = node.config.max_value_bytes
    if len(value) > limit // 4 and len(value.encode("utf-8")) > limit:
        raise ApiError(413, "value_too_large", f"the value is over the limit of {limit} bytes")
    return value


def with_session(body: dict[str, Any], command: dict[str, Any]) -> dict[str, Any]:
    """Add the client's (client_id, seq), which makes a retried write apply once."""
    client_id, seq = body.get("client_id"), body.get("seq")
    if (client_id is None) != (seq is None):
        raise ApiError(400, "bad_request", "client_id and seq go together")
    if client_id is not None:
        if not isinstance(client_id, str) or not client_id or len(client_id) > 128:
            raise ApiError(400, "bad_request", "client_id must be a string of 1-128 characters")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < MAX_SEQ:
            raise ApiError(400, "bad_request", "seq must be an integer from 0 to 2**63 - 1")
        command["client_id"], command["seq"] = client_id, seq
    return command


def is_base_url(address: Any) -> TypeGuard[str]:
    """http://host:port and nothing else: what the peer transport can connect to.

    A member's address goes into the log and every node opens a link to it, so
    one it cannot parse would break every node's ready loop.
    """
    if not isinstance(address, str) or not address.isascii() or not address.isprintable():
        return False
    try:
        parts = urlsplit(address)
        port = parts.port  # raises ValueError if not a number in 0-65535
    except ValueError:
        return False
    return (
        parts.scheme == "http"
        and bool(parts.hostname)
        and bool(port)
        and parts.username is None
        and not (parts.path or parts.query or parts.fragment)
        and not any(c in address for c in " ?#")
    )


async def replicate(node: NodeServer, command: dict[str, Any]) -> dict[str, Any] | None:
    """Commit a command through our log (we lead) and return the store's answer."""
    try:
        result = await node.propose(command, node.config.request_timeout)
    except NotLeader as exc:
        raise ApiError(503, "not_leader", "leadership changed; retry") from exc
    except NotApplied as exc:
        raise ApiError(503, "not_leader", f"{exc}; retry") from exc
    except TimeoutError as exc:
        raise ApiError(
            504, "timeout", "the write was not committed in time; the outcome is unknown"
        ) from exc
    if result is not None and "error" in result:
        raise ApiError(409, result["error"], result.get("message", ""))
    return result


def read_locally(node: NodeServer, consistency: str | None) -> bool | None:
    """Whether a read may be answered here at once (True), needs a read barrier
    first (None), or goes to the leader (False)."""
    mode = node.config.read_mode
    if consistency == "serializable" or mode == "serializable":
        return True
    if mode in ("proxy", "lease") and not node.core.is_leader:
        return False
    return None


async def read_barrier(node: NodeServer, consistency: str | None) -> bool:
    """Wait until a linearizable read may be served here; False means forward it."""
    local = read_locally(node, consistency)
    if local is not None:
        return local
    try:
        await node.read_barrier(
            lease=node.config.read_mode == "lease", timeout=node.config.request_timeout
        )
    except (ReadFailed, TimeoutError) as exc:
        raise ApiError(503, "no_leader", "no leader could confirm this read; retry") from exc
    return True


async def forward(
    node: NodeServer,
    method: str,
    uri: str,
    body: bytes,
    *,
    auth: str | None,
    forwarded: bool,
) -> tuple[int, bytes, str]:
    """Relay a request to the leader: (its status, its body, its address).

    Only the token and a hop mark go on; a request that was already forwarded
    once and meets a node that is no longer leader stops there.
    """
    if forwarded:
        raise ApiError(503, "not_leader", "this node is no longer the leader; retry")
    timeout = node.config.request_timeout
    election = 2 * node.core.options.election_timeout[1]  # time enough for an election
    relay = {FORWARDED_HEADER: "1", "Content-Type": "application/json"}
    if auth:
        relay["Authorization"] = auth
    leader = await node.wait_for_leader(min(timeout, election))
    while True:
        if node.core.is_leader:
            raise BecameLeader
        address = node.leader_address()
        if leader is None or address is None:
            raise ApiError(503, "no_leader", "no leader is elected right now; retry shortly")
        try:
            resp = await node.pool(address).request(method, uri, body, relay, timeout)
            break
        except ConnectionFailed as exc:
            if exc.sent:
                raise ApiError(
                    504, "timeout", f"the leader did not answer: {exc}; the outcome is unknown"
                ) from exc
            # Not sent, so not applied. The leader we know is likely gone (a
            # refused connection): hold the request for the next one, as a
            # client would have to, rather than fail it in the middle of a
            # failover. An election starts within the longest timeout; wait
            # no longer than that, so the client hears 503 before its own timeout.
            hold = min(timeout, node.core.options.election_timeout[1])
            leader = await node.wait_for_leader(hold, other_than=leader)
            if leader is None:
                raise ApiError(503, "unavailable", f"cannot reach the leader: {exc}") from exc
    return resp.status, resp.body, address
