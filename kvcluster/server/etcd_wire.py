"""etcd's v3 JSON gateway on the wire, translated to and from kvcluster's own shapes.

Existing etcd clients (etcd3gw, curl scripts, anything written against etcd
3.4's grpc-gateway) must work unchanged, so every byte this module writes is
what etcd 3.4 writes, checked against a real etcd in tests/test_etcd_wire.py.
It is pure: no I/O, no routes, no clock. A route reads a body with `body_of`,
turns it into a command or a read with a `parse_*` function, and writes the
store's answer with the matching `render_*` function; any `EtcdError` raised
on the way is answered with `EtcdError.status` and `EtcdError.body()`.

What etcd's gateway does, and so what this does:
- bytes (keys, values, range ends) travel as standard base64 with padding;
  kvcluster stores UTF-8 text, so bytes that are not UTF-8 are refused here;
- 64-bit integers go out as JSON strings and come in as numbers or strings;
- fields holding their default (0, false, empty) are left out of answers;
- fields are read by their proto name or its lowerCamel JSON name (the
  latter wins when both are sent), unknown fields are ignored;
- errors are {"error": message, "message": message, "code": gRPC code} with
  the HTTP status grpc-gateway v1 derives from the code.
Where etcd accepts nonsense (negative limits, unknown enum numbers, two
members of a oneof at once, of which it keeps one at random), this answers a
400 that says what is wrong instead: bad input never reaches the log.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import orjson

# ---------------------------------------------------------------------------
# gRPC codes, HTTP statuses, errors


class Code(IntEnum):
    """gRPC status codes: etcd's errors carry one, and the gateway's status follows it."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# grpc-gateway v1.9 (etcd 3.4) HTTPStatusFromCode; FAILED_PRECONDITION is 412
# there (a real etcd 3.4.23 answers "lease already exists" with 412).
HTTP_STATUS: dict[int, int] = {
    Code.OK: 200,
    Code.CANCELLED: 408,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 412,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    412: "Precondition Failed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# etcd's own messages, word for word: Go clients turn errors back into typed
# errors by their text, so a client that matches on them keeps working.
ERR_EMPTY_KEY = "etcdserver: key is not provided"
ERR_KEY_NOT_FOUND = "etcdserver: key not found"
ERR_VALUE_PROVIDED = "etcdserver: value is provided"
ERR_LEASE_PROVIDED = "etcdserver: lease is provided"
ERR_TOO_MANY_OPS = "etcdserver: too many operations in txn request"
ERR_DUPLICATE_KEY = "etcdserver: duplicate key given in txn request"
ERR_COMPACTED = "etcdserver: mvcc: required revision has been compacted"
ERR_FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"
ERR_LEASE_NOT_FOUND = "etcdserver: requested lease not found"
ERR_LEASE_EXISTS = "etcdserver: lease already exists"
ERR_LEASE_TTL_TOO_LARGE = "etcdserver: too large lease TTL"
ERR_NO_LEADER = "etcdserver: no leader"
ERR_NO_SPACE = "etcdserver: mvcc: database space exceeded"
ERR_NOT_LEADER = "etcdserver: not leader"
ERR_TIMEOUT = "etcdserver: request timed out"
WATCH_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"

# Internal error codes (a store or node result {"error": code, "message": ...})
# and what etcd says for each. A None message keeps the result's own message.
INTERNAL_ERRORS: dict[str, tuple[Code, str | None]] = {
    "compacted": (Code.OUT_OF_RANGE, ERR_COMPACTED),
    "future_revision": (Code.OUT_OF_RANGE, ERR_FUTURE_REV),
    "lease_not_found": (Code.NOT_FOUND, ERR_LEASE_NOT_FOUND),
    "lease_exists": (Code.FAILED_PRECONDITION, ERR_LEASE_EXISTS),
    "lease_ttl_too_large": (Code.OUT_OF_RANGE, ERR_LEASE_TTL_TOO_LARGE),
    "key_not_found": (Code.INVALID_ARGUMENT, ERR_KEY_NOT_FOUND),
    "too_many_ops": (Code.INVALID_ARGUMENT, ERR_TOO_MANY_OPS),
    "duplicate_key": (Code.INVALID_ARGUMENT, ERR_DUPLICATE_KEY),
    "invalid_command": (Code.INVALID_ARGUMENT, None),
    "bad_request": (Code.INVALID_ARGUMENT, None),
    "not_found": (Code.NOT_FOUND, None),
    "too_many_leases": (Code.RESOURCE_EXHAUSTED, None),
    "no_space": (Code.RESOURCE_EXHAUSTED, ERR_NO_SPACE),
    "no_leader": (Code.UNAVAILABLE, ERR_NO_LEADER),
    "membership_busy": (Code.UNAVAILABLE, None),
    "shutting_down": (Code.UNAVAILABLE, None),
    "member_removed": (Code.FAILED_PRECONDITION, None),
    "not_leader": (Code.UNAVAILABLE, ERR_NOT_LEADER),
    "unavailable": (Code.UNAVAILABLE, None),
    "timeout": (Code.UNAVAILABLE, ERR_TIMEOUT),
}


class EtcdError(Exception):
    """A request answered with an error, as etcd's gateway writes one."""

    def __init__(self, code: Code | int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = Code(code), message

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def body(self) -> bytes:
        """`{"error": m, "message": m, "code": c}`: both fields carry the message in 3.4."""
        body = {"error": self.message, "message": self.message, "code": int(self.code)}
        return orjson.dumps(body)

    def stream_chunk(self) -> bytes:
        """The error as the last message of a stream whose headers are already out."""
        return render_stream_error(self.code, self.message)


def render_error(code: Code | int, message: str) -> tuple[int, bytes]:
    """(HTTP status, body) of an error answer."""
    error = EtcdError(code, message)
    return error.status, error.body()


def render_stream_error(code: Code | int, message: str) -> bytes:
    """The chunk grpc-gateway v1 ends a broken stream with (a watch whose node
    stopped serving, say). It carries no trailing newline, as in the gateway."""
    status = HTTP_STATUS.get(Code(code), 500)
    error = {
        "grpc_code": int(code),
        "http_code": status,
        "message": message,
        "http_status": _REASONS.get(status, "Internal Server Error"),
    }
    return orjson.dumps({"error": error})


def error_for(result: Mapping[str, Any]) -> EtcdError:
    """The etcd error for an internal error result {"error": code, "message": ...}.

    An unknown code becomes UNKNOWN (500) with the result's message, so that a
    new internal error is visible rather than disguised as a client mistake.
    """
    code = str(result.get("error", ""))
    message = str(result.get("message") or code)
    grpc_code, etcd_message = INTERNAL_ERRORS.get(code, (Code.UNKNOWN, None))
    return EtcdError(grpc_code, etcd_message or message)


# ---------------------------------------------------------------------------
# Limits, headers, identifiers

MAX_INT64 = (1 << 63) - 1
MAX_UINT64 = (1 << 64) - 1
MAX_TXN_OPS = 128  # etcd's --max-txn-ops default
MAX_LEASE_TTL = 9_000_000_000  # seconds: etcd's MaxLeaseTTL
ETCD_VERSION = "3.4.0"  # what /version claims: clients pick the /v3 prefix from it


@dataclass(frozen=True)
class Limits:
    """What one request may hold, checked before anything reaches the log."""

    max_key_bytes: int = 4096
    max_value_bytes: int = 1 << 20
    max_txn_ops: int = MAX_TXN_OPS


DEFAULT_LIMITS = Limits()


def header(cluster_id: int, member_id: int, revision: int, raft_term: int) -> dict[str, str]:
    """A ResponseHeader: 64-bit integers as strings, zeros left out (as etcd does).

    For kv routes `revision` is the store's revision after the request (the
    result's "revision"); etcd's member list leaves it out, which
    `render_member_list` does for the caller.
    """
    out: dict[str, str] = {}
    for name, value, top in (
        ("cluster_id", cluster_id, MAX_UINT64),
        ("member_id", member_id, MAX_UINT64),
        ("revision", revision, MAX_INT64),
        ("raft_term", raft_term, MAX_UINT64),
    ):
        if type(value) is not int or not 0 <= value <= top:
            raise ValueError(f"header {name} must be an integer from 0 to {top}, got {value!r}")
        if value:
            out[name] = str(value)
    return out


def uint64_id(name: str) -> int:
    """A stable, non-zero 64-bit ID for a kvcluster name (a member's or a cluster's).

    etcd's member and cluster IDs are uint64 and clients print and compare
    them; kvcluster names its members with strings, so each name maps to one
    number, the same on every node and across restarts.
    """
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") or 1


# ---------------------------------------------------------------------------
# Reading request bodies


def body_of(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object. An empty body is an empty request, as in
    etcd's gateway (so `curl -X POST .../v3/maintenance/status` works)."""
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EtcdError(Code.INVALID_ARGUMENT, f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EtcdError(
            Code.INVALID_ARGUMENT,
            f"the body must be a JSON object, not {_json_type(data)}: "
            'for example {"key": "Zm9v"} (keys and values in base64)',
        )
    return data


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _bad(path: str, problem: str) -> EtcdError:
    return EtcdError(Code.INVALID_ARGUMENT, f"{path}: {problem}")


def _enum(value: Any, where: str, names: Sequence[str]) -> str:
    if isinstance(value, str) and value in names:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    choices = ", ".join(f"{n} ({i})" for i, n in enumerate(names))
    raise _bad(where, f"must be one of {choices}, not {json.dumps(value)[:40]}")


def _camel(name: str) -> str:
    """The lowerCamel JSON name protobuf gives a field (range_end -> rangeEnd)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


_DIGITS = re.compile(r"-?[0-9]+")
_LINE_BREAKS = str.maketrans("", "", "\r\n")


class _Message:
    """One JSON object read as a protobuf message: fields by proto or JSON name,
    null as absent, every value checked for its type; `path` names the object
    in error messages (success[0].request_put)."""

    def __init__(self, data: Mapping[str, Any], path: str, limits: Limits) -> None:
        self.data, self.path, self.limits = data, path, limits

    def where(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def raw(self, name: str) -> Any:
        camel = _camel(name)
        if camel != name and self.data.get(camel) is not None:
            return self.data[camel]
        return self.data.get(name)

    def has(self, name: str) -> bool:
        return self.raw(name) is not None

    def text(self, name: str, limit: int) -> str:
        """A bytes field: base64 that decodes to UTF-8 text within `limit` bytes."""
        value, where = self.raw(name), self.where(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise _bad(where, f"must be a base64 string, not {_json_type(value)}")
        try:
            data = binascii.a2b_base64(value.translate(_LINE_BREAKS), strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad(
                where,
                f"is not standard base64 with padding ({exc}): "
                'send bytes as base64, e.g. "Zm9v" for foo',
            ) from None
        if len(data) > limit:
            raise _bad(where, f"is {len(data)} bytes; the limit is {limit} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(
                where,
                "is not UTF-8 text: kvcluster stores keys and values as UTF-8, "
                "so other bytes cannot be stored or compared",
            ) from None

    def int64(self, name: str) -> int:
        """An int64 field: a JSON integer or a decimal string, from 0 to 2**63-1."""
        value = self.raw(name)
        if value is None:
            return 0
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
            number = int(value.strip())
        if number is None or not 0 <= number <= MAX_INT64:
            shown = json.dumps(value)[:40] if isinstance(value, str | int | float) else ""
            raise _bad(
                self.where(name),
                f"must be an integer from 0 to {MAX_INT64} "
                f"(a JSON number or a decimal string), not {_json_type(value)} {shown}".rstrip(),
            )
        return number

    def boolean(self, name: str) -> bool:
        value = self.raw(name)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise _bad(self.where(name), f"must be true or false, not {_json_type(value)}")
        return value

    def enum(self, name: str, names: Sequence[str]) -> str:
        """An enum field: its name, or its number, as protobuf's JSON allows."""
        value = self.raw(name)
        return names[0] if value is None else _enum(value, self.where(name), names)

    def message(self, name: str) -> _Message | None:
        value, where = self.raw(name), self.where(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _bad(where, f"must be a JSON object, not {_json_type(value)}")
        return _Message(value, where, self.limits)

    def items(self, name: str) -> list[Any]:
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise _bad(self.where(name), f"must be a JSON array, not {_json_type(value)}")
        return value

    def messages(self, name: str) -> list[_Message]:
        out = []
        for i, item in enumerate(self.items(name)):
            where = f"{self.where(name)}[{i}]"
            if not isinstance(item, dict):
                raise _bad(where, f"must be a JSON object, not {_json_type(item)}")
            out.append(_Message(item, where, self.limits))
        return out

    def one_of(self, names: Sequence[str]) -> str | None:
        """Which member of a oneof is set; two at once is refused (etcd keeps one
        of them at random, which no client can mean)."""
        present = [n for n in names if self.has(n)]
        if len(present) > 1:
            where = self.path or "the body"
            raise _bad(where, f"sets {' and '.join(present)}; set only one of {', '.join(names)}")
        return present[0] if present else None

    def key(self) -> str:
        return self.text("key", self.limits.max_key_bytes)

    def range_end(self) -> str | None:
        """A range end: absent or empty for the key alone; "\\x00" for every key >= key."""
        return self.text("range_end", self.limits.max_key_bytes) or None


def _top(body: Mapping[str, Any], limits: Limits) -> _Message:
    if not isinstance(body, Mapping):
        raise EtcdError(Code.INVALID_ARGUMENT, "the body must be a JSON object")
    return _Message(body, "", limits)


def _required_key(msg: _Message) -> str:
    key = msg.key()
    if not key:
        raise EtcdError(Code.INVALID_ARGUMENT, ERR_EMPTY_KEY)
    return key


# ---------------------------------------------------------------------------
# Range

SORT_ORDERS = ("NONE", "ASCEND", "DESCEND")
SORT_TARGETS = ("KEY", "VERSION", "CREATE", "MOD", "VALUE")


@dataclass(frozen=True)
class RangeRequest:
    """A RangeRequest. The store serves it whole (`read_args()`): the sort, the
    revision filters and the limit are etcd's Range semantics, which the store
    applies, in a txn too; this module only translates."""

    key: str
    range_end: str | None = None
    limit: int = 0
    revision: int = 0
    sort_order: str = "NONE"
    sort_target: str = "KEY"
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0

    def read_args(self) -> dict[str, Any]:
        """Keyword arguments for the store's range(), defaults left out; also the
        body of a txn's request_range. `serializable` is not among them: it
        picks how the node reads, not what the store returns."""
        args: dict[str, Any] = {"key": self.key}
        if self.range_end is not None:
            args["range_end"] = self.range_end
        for name in (
            "revision",
            "limit",
            "keys_only",
            "count_only",
            "min_mod_revision",
            "max_mod_revision",
            "min_create_revision",
            "max_create_revision",
        ):
            value = getattr(self, name)
            if value:
                args[name] = value
        if self.sort_order != "NONE":
            args["sort_order"] = self.sort_order
        if self.sort_target != "KEY":
            args["sort_target"] = self.sort_target
        return args


def parse_range(body: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> RangeRequest:
    """POST /v3/kv/range."""
    return _range(_top(body, limits))


def _range(msg: _Message) -> RangeRequest:
    request = RangeRequest(
        key=msg.key(),
        range_end=msg.range_end(),
        limit=msg.int64("limit"),
        revision=msg.int64("revision"),
        sort_order=msg.enum("sort_order", SORT_ORDERS),
        sort_target=msg.enum("sort_target", SORT_TARGETS),
        serializable=msg.boolean("serializable"),
        keys_only=msg.boolean("keys_only"),
        count_only=msg.boolean("count_only"),
        min_mod_revision=msg.int64("min_mod_revision"),
        max_mod_revision=msg.int64("max_mod_revision"),
        min_create_revision=msg.int64("min_create_revision"),
        max_create_revision=msg.int64("max_create_revision"),
    )
    if not request.key:
        raise EtcdError(Code.INVALID_ARGUMENT, ERR_EMPTY_KEY)
    return request


def _range_response(result: Mapping[str, Any], head: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"header": dict(head)}
    kvs = result.get("kvs") or ()
    if kvs:
        out["kvs"] = [_kv(kv) for kv in kvs]
    if result.get("more"):
        out["more"] = True
    count = int(result.get("count", 0))
    if count:
        out["count"] = str(count)
    return out


def render_range(result: Mapping[str, Any], head: Mapping[str, str]) -> bytes:
    """The store's range result {"revision", "kvs", "count", "more"} as etcd's
    RangeResponse (`count`: every key in the range, before limit and filters)."""
    return orjson.dumps(_range_response(result, head))


def _kv(kv: Mapping[str, Any]) -> dict[str, Any]:
    """A KeyValue: base64 key and value, revisions as strings, zeros left out."""
    out: dict[str, Any] = {}
    key = kv.get("key", "")
    if key:
        out["key"] = _b64(key)
    for name in ("create_revision", "mod_revision", "version"):
        number = int(kv.get(name, 0))
        if number:
            out[name] = str(number)
    value = kv.get("value", "")
    if value:
        out["value"] = _b64(value)
    lease = int(kv.get("lease", 0))
    if lease:
        out["lease"] = str(lease)
    return out


def _b64(text: str) -> str:
    return binascii.b2a_base64(text.encode("utf-8"), newline=False).decode("ascii")


# ---------------------------------------------------------------------------
# Put and delete


def parse_put(body: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """POST /v3/kv/put -> {"op": "put", "key", "value", and the options set}.

    An absent value is the empty value, as in etcd. ignore_value keeps the
    key's value (the command carries "value": ""), ignore_lease its lease.
    """
    return {"op": "put", **_put(_top(body, limits))}


def _put(msg: _Message) -> dict[str, Any]:
    key = _required_key(msg)
    value = msg.text("value", msg.limits.max_value_bytes)
    lease = msg.int64("lease")
    prev_kv = msg.boolean("prev_kv")
    ignore_value = msg.boolean("ignore_value")
    ignore_lease = msg.boolean("ignore_lease")
    if ignore_value and value:
        raise EtcdError(Code.INVALID_ARGUMENT, ERR_VALUE_PROVIDED)
    if ignore_lease and lease:
        raise EtcdError(Code.INVALID_ARGUMENT, ERR_LEASE_PROVIDED)
    out: dict[str, Any] = {"key": key, "value": value}
    if lease:
        out["lease"] = lease
    if prev_kv:
        out["prev_kv"] = True
    if ignore_value:
        out["ignore_value"] = True
    if ignore_lease:
        out["ignore_lease"] = True
    return out


def _put_response(result: Mapping[str, Any], head: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"header": dict(head)}
    prev = result.get("prev_kv")
    if prev:
        out["prev_kv"] = _kv(prev)
    return out


def render_put(result: Mapping[str, Any], head: Mapping[str, str]) -> bytes:
    """A put's result {"revision", "prev_kv"?} as etcd's PutResponse (prev_kv
    only when the request asked for it and the key existed, which the store
    decides)."""
    return orjson.dumps(_put_response(result, head))


def parse_delete_range(body: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """POST /v3/kv/deleterange -> {"op": "delete_range", "key", "range_end"?, "prev_kv"?}."""
    return {"op": "delete_range", **_delete(_top(body, limits))}


def _delete(msg: _Message) -> dict[str, Any]:
    out: dict[str, Any] = {"key": _required_key(msg)}
    range_end = msg.range_end()
    if range_end is not None:
        out["range_end"] = range_end
    if msg.boolean("prev_kv"):
        out["prev_kv"] = True
    return out


def _delete_response(result: Mapping[str, Any], head: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"header": dict(head)}
    deleted = int(result.get("deleted", 0))
    if deleted:
        out["deleted"] = str(deleted)
    prev_kvs = result.get("prev_kvs") or ()
    if prev_kvs:
        out["prev_kvs"] = [_kv(kv) for kv in prev_kvs]
    return out


def render_delete_range(result: Mapping[str, Any], head: Mapping[str, str]) -> bytes:
    """A delete_range result {"revision", "deleted", "prev_kvs"?} as etcd's answer."""
    return orjson.dumps(_delete_response(result, head))


# ---------------------------------------------------------------------------
# Transactions

COMPARE_RESULTS = ("EQUAL", "GREATER", "LESS", "NOT_EQUAL")
COMPARE_TARGETS = ("VERSION", "CREATE", "MOD", "VALUE", "LEASE")
# The oneof member each target compares with; etcd compares with the zero
# value when the request set another member (or none).
COMPARE_OPERANDS = {
    "VERSION": "version",
    "CREATE": "create_revision",
    "MOD": "mod_revision",
    "VALUE": "value",
    "LEASE": "lease",
}
_OP_KINDS = ("request_range", "request_put", "request_delete_range", "request_txn")


@dataclass(frozen=True)
class TxnRequest:
    """A parsed TxnRequest: `command()` is what goes through the log."""

    compare: tuple[dict[str, Any], ...] = ()
    success: tuple[tuple[str, Any], ...] = ()
    failure: tuple[tuple[str, Any], ...] = ()

    def command(self) -> dict[str, Any]:
        """{"op": "txn", "compare", "success", "failure"} for the log."""
        return {"op": "txn", **self._body()}

    def _body(self) -> dict[str, Any]:
        return {
            "compare": [dict(c) for c in self.compare],
            "success": [_op_body(kind, op) for kind, op in self.success],
            "failure": [_op_body(kind, op) for kind, op in self.failure],
        }

    @property
    def read_only(self) -> bool:
        """No put or delete in any branch, nested or not: etcd serves such a txn
        as a read rather than through the log."""
        return all(
            kind == "request_range" or (kind == "request_txn" and op.read_only)
            for kind, op in (*self.success, *self.failure)
        )


def _op_body(kind: str, op: Any) -> dict[str, Any]:
    if kind == "request_range":
        return {kind: op.read_args()}
    if kind == "request_txn":
        return {kind: op._body()}
    return {kind: dict(op)}


def parse_txn(body: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> TxnRequest:
    """POST /v3/kv/txn, with the checks etcd makes before proposing: op count,
    keys present, and no key put twice or put and deleted in one branch."""
    txn = _txn(_top(body, limits), limits.max_txn_ops)
    for branch in (txn.success, txn.failure):
        _check_intervals(branch)
    return txn


def _txn(msg: _Message, max_ops: int) -> TxnRequest:
    compares = msg.messages("compare")
    success = msg.messages("success")
    failure = msg.messages("failure")
    ops = max(len(compares), len(success), len(failure))
    if ops > max_ops:
        raise EtcdError(Code.INVALID_ARGUMENT, ERR_TOO_MANY_OPS)
    return TxnRequest(
        compare=tuple(_compare(c) for c in compares),
        success=tuple(_op(o, max_ops - ops) for o in success),
        failure=tuple(_op(o, max_ops - ops) for o in failure),
    )


def _compare(msg: _Message) -> dict[str, Any]:
    key = _required_key(msg)
    target = msg.enum("target", COMPARE_TARGETS)
    result = msg.enum("result", COMPARE_RESULTS)
    set_member = msg.one_of(tuple(COMPARE_OPERANDS.values()))
    operand = COMPARE_OPERANDS[target]
    out: dict[str, Any] = {"key": key}
    range_end = msg.range_end()
    if range_end is not None:
        out["range_end"] = range_end
    out["target"], out["result"] = target, result
    if set_member is not None and set_member != operand:
        # Still checked, so that a malformed member is not silently dropped.
        _operand(msg, set_member)
    out[operand] = _operand(msg, operand) if set_member == operand else _zero(operand)
    return out


def _operand(msg: _Message, name: str) -> str | int:
    if name == "value":
        return msg.text("value", msg.limits.max_value_bytes)
    return msg.int64(name)


def _zero(name: str) -> str | int:
    return "" if name == "value" else 0


def _op(msg: _Message, max_ops: int) -> tuple[str, Any]:
    kind = msg.one_of(_OP_KINDS)
    if kind is None:
        raise _bad(msg.path, f"a request op must hold one of {', '.join(_OP_KINDS)}")
    inner = msg.message(kind)
    assert inner is not None
    if kind == "request_range":
        return kind, _range(inner)
    if kind == "request_put":
        return kind, _put(inner)
    if kind == "request_delete_range":
        return kind, _delete(inner)
    return kind, _txn(inner, max_ops)


@dataclass
class _Intervals:
    """Keys put and ranges deleted in one branch (with its nested txns)."""

    puts: set[str] = field(default_factory=set)
    deletes: list[tuple[str, str | None]] = field(default_factory=list)

    def deleted(self, key: str) -> bool:
        for start, end in self.deletes:
            if end is None:
                if key == start:
                    return True
            elif start <= key and (end == "\x00" or key < end):
                return True
        return False


def _check_intervals(ops: Sequence[tuple[str, Any]]) -> _Intervals:
    """etcd's rule: within one branch no key is put twice, and no key is both
    put and deleted; the two branches of a nested txn exclude each other, so
    they may touch the same key."""
    seen = _Intervals()
    for kind, op in ops:
        if kind == "request_delete_range":
            seen.deletes.append((op["key"], op.get("range_end")))
    for kind, op in ops:
        if kind != "request_txn":
            continue
        then, other = _check_intervals(op.success), _check_intervals(op.failure)
        for key in then.puts:
            if key in seen.puts or seen.deleted(key):
                raise EtcdError(Code.INVALID_ARGUMENT, ERR_DUPLICATE_KEY)
        for key in other.puts:
            if (key in seen.puts and key not in then.puts) or seen.deleted(key):
                raise EtcdError(Code.INVALID_ARGUMENT, ERR_DUPLICATE_KEY)
        seen.puts |= then.puts | other.puts
        seen.deletes += then.deletes + other.deletes
    for kind, op in ops:
        if kind != "request_put":
            continue
        if op["key"] in seen.puts or seen.deleted(op["key"]):
            raise EtcdError(Code.INVALID_ARGUMENT, ERR_DUPLICATE_KEY)
        seen.puts.add(op["key"])
    return seen


def render_txn(result: Mapping[str, Any], head: Mapping[str, str]) -> bytes:
    """A txn result {"revision", "succeeded", "responses"} as etcd's TxnResponse.

    Each response is {"response_range"|"response_put"|"response_delete_range"|
    "response_txn": result}, in the order of the branch taken. etcd gives each
    op's response a header holding only a revision: the store's revision as
    that op saw it (the txn's new revision once anything in it has changed,
    the old one before); a nested txn's header is empty.
    """
    return orjson.dumps(_txn_response(result, dict(head)))


def _txn_response(result: Mapping[str, Any], head: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"header": head}
    if result.get("succeeded"):
        out["succeeded"] = True
    rendered = []
    for response in result.get("responses") or ():
        if len(response) != 1:
            raise ValueError(f"a txn response holds one result, not {sorted(response)}")
        [(name, sub)] = response.items()
        sub_head = {"revision": str(sub["revision"])} if int(sub.get("revision", 0)) else {}
        if name == "response_range":
            body = _range_response(sub, sub_head)
        elif name == "response_put":
            body = _put_response(sub, sub_head)
        elif name == "response_delete_range":
            body = _delete_response(sub, sub_head)
        elif name == "response_txn":
            body = _txn_response(sub, {})
        else:
            raise ValueError(f"unknown txn response {name!r}")
        rendered.append({name: body})
    if rendered:
        out["responses"] = rendered
    return out


# ---------------------------------------------------------------------------
# Compaction


def parse_compaction(body: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """POST /v3/kv/compaction -> {"op": "compact", "revision"}. `physical` is
    accepted and has no effect (compaction here is done when it is applied).
    Revision 0 goes to the store, which answers "compacted", as etcd does."""
    msg = _top(body, limits)
    msg.boolean("physical")
    return {"op": "compact", "revision": msg.int64("revision")}


def render_compaction(head: Mapping[str, str]) -> bytes:
    """A CompactionResponse: the header alone (revision: the store's current one)."""
    return orjson.dumps({"header": dict(head)})


# ---------------------------------------------------------------------------
# Leases


@dataclass(frozen=True)
class LeaseTimeToLiveRequest:
    """POST /v3/lease/timetolive (and /v3/kv/lease/timetolive): a read."""

    id: int
    keys: bool = False


def parse_lease_grant(body: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """POST /v3/lease/grant -> {"op": "lease_grant", "ttl", "id"?} (no "id": the
    leader picks one). The node adds "now", and raises a TTL below its minimum
    to that minimum, as etcd does (etcd: 1.5 election timeouts, 2 s by default)."""
    msg = _top(body, limits)
    ttl, lease_id = msg.int64("TTL"), msg.int64("ID")
    if ttl > MAX_LEASE_TTL:
        raise EtcdError(Code.OUT_OF_RANGE, ERR_LEASE_TTL_TOO_LARGE)
    out: dict[str, Any] = {"op": "lease_grant", "ttl": ttl}
    if lease_id:
        out["id"] = lease_id
    return out


def render_lease_grant(result: Mapping[str, Any], head: Mapping[str, str]) -> bytes:
    """A grant's result {"id", "ttl"} as etcd's LeaseGrantResponse."""
    return orjson.dumps({"header": dict(head), **_lease_fields(result["id"], result["ttl"])})


def _lease_fields(lease_id: int, ttl: int) -> dict[str, str]:
    out = {}
    if lease_id:
        out["ID"] = str(lease_id)
    if ttl:
        out["TTL"] = str(ttl)
    return out


def _lease_id(body: Mapping[str, Any], limits: Limits) -> int:
    return _top(body, limits).int64("ID")


def parse_lease_revoke(body: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """POST /v3/lease/revoke (and /v3/kv/lease/revoke) -> {"op": "lease_revoke", "id"}."""
    return {"op": "lease_revoke", "id": _lease_id(body, limits)}


def render_lease_revoke(head: Mapping[str, str]) -> bytes:
    """A LeaseRevokeResponse: the header alone."""
    return orjson.dumps({"header": dict(head)})


def parse_lease_keepalive(
    body: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """POST /v3/lease/keepalive -> {"op": "lease_keepalive", "id"} (the node adds
    "now"). There is no /v3/kv/lease/keepalive in etcd 3.4."""
    return {"op": "lease_keepalive", "id": _lease_id(body, limits)}


def render_lease_keepalive(lease_id: int, ttl: int, head: Mapping[str, str]) -> bytes:
    """A keep-alive answer, which etcd streams: one `{"result": ...}` line.

    `ttl` is the lease's granted TTL after the renewal. For a lease that does
    not exist etcd answers 200 with TTL 0 (left out), not an error; etcd3gw
    reads that as -1.
    """
    result = {"header": dict(head), **_lease_fields(lease_id, ttl)}
    return orjson.dumps({"result": result}) + b"\n"


def parse_lease_timetolive(
    body: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS
) -> LeaseTimeToLiveRequest:
    msg = _top(body, limits)
    return LeaseTimeToLiveRequest(id=msg.int64("ID"), keys=msg.boolean("keys"))


def render_lease_timetolive(result: Mapping[str, Any], head: Mapping[str, str]) -> bytes:
    """{"id", "ttl", "granted_ttl", "keys"?} as etcd's LeaseTimeToLiveResponse.

    `ttl` is the remaining seconds; a lease that does not exist is
    {"id": id, "ttl": -1}: etcd answers that with 200, not an error.
    """
    out: dict[str, Any] = {"header": dict(head)}
    lease_id, ttl = int(result.get("id", 0)), int(result.get("ttl", 0))
    granted = int(result.get("granted_ttl", 0))
    if lease_id:
        out["ID"] = str(lease_id)
    if ttl:
        out["TTL"] = str(ttl)
    if granted:
        out["grantedTTL"] = str(granted)
    keys = result.get("keys") or ()
    if keys:
        out["keys"] = [_b64(k) for k in keys]
    return orjson.dumps(out)


def render_lease_leases(lease_ids: Iterable[int], head: Mapping[str, str]) -> bytes:
    """POST /v3/lease/leases (and /v3/kv/lease/leases): etcd lists them in
    order of expiry, soonest first; the caller passes them in that order."""
    out: dict[str, Any] = {"header": dict(head)}
    leases = [{"ID": str(i)} for i in lease_ids]
    if leases:
        out["leases"] = leases
    return orjson.dumps(out)


# ---------------------------------------------------------------------------
# Cluster, maintenance, version


@dataclass(frozen=True)
class Member:
    """A member as etcd's member list shows it."""

    id: int
    name: str = ""
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False


def render_member_list(members: Iterable[Member], head: Mapping[str, str]) -> bytes:
    """POST /v3/cluster/member/list. etcd's header here has no revision."""
    out: dict[str, Any] = {"header": {k: v for k, v in head.items() if k != "revision"}}
    rendered = []
    for m in members:
        one: dict[str, Any] = {"ID": str(m.id)} if m.id else {}
        if m.name:
            one["name"] = m.name
        if m.peer_urls:
            one["peerURLs"] = list(m.peer_urls)
        if m.client_urls:
            one["clientURLs"] = list(m.client_urls)
        if m.is_learner:
            one["isLearner"] = True
        rendered.append(one)
    if rendered:
        out["members"] = rendered
    return orjson.dumps(out)


@dataclass(frozen=True)
class Status:
    """What /v3/maintenance/status reports about the member that answers."""

    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    db_size: int = 0
    db_size_in_use: int = 0
    version: str = ETCD_VERSION
    errors: tuple[str, ...] = ()
    is_learner: bool = False


def render_status(status: Status, head: Mapping[str, str]) -> bytes:
    """POST /v3/maintenance/status: etcd's field names (camelCase here) and order."""
    out: dict[str, Any] = {"header": dict(head)}
    if status.version:
        out["version"] = status.version
    for name, value in (
        ("dbSize", status.db_size),
        ("leader", status.leader),
        ("raftIndex", status.raft_index),
        ("raftTerm", status.raft_term),
        ("raftAppliedIndex", status.raft_applied_index),
    ):
        if value:
            out[name] = str(value)
    if status.errors:
        out["errors"] = list(status.errors)
    if status.db_size_in_use:
        out["dbSizeInUse"] = str(status.db_size_in_use)
    if status.is_learner:
        out["isLearner"] = True
    return orjson.dumps(out)


def render_version(server: str = ETCD_VERSION, cluster: str = ETCD_VERSION) -> bytes:
    """GET /version. Clients choose the API prefix from "etcdserver" (etcd3gw:
    3.4 and later -> /v3/, 3.3 -> /v3beta/, older -> /v3alpha/), so it must
    say 3.4 or later for /v3 to be used."""
    return orjson.dumps({"etcdserver": server, "etcdcluster": cluster})


# ---------------------------------------------------------------------------
# Watch

WATCH_FILTERS = ("NOPUT", "NODELETE")
PROGRESS_WATCH_ID = -1  # etcd 3.4 answers a progress request with watch_id -1


@dataclass(frozen=True)
class WatchCreate:
    """A create_request. key "" becomes "\\x00" (the smallest key), as in etcd;
    range_end None watches the key alone, "\\x00" every key >= key. watch_id 0
    lets the server choose (etcd's first choice on a stream is 0 too)."""

    key: str
    range_end: str | None = None
    start_revision: int = 0
    progress_notify: bool = False
    filters: frozenset[str] = frozenset()
    prev_kv: bool = False
    watch_id: int = 0
    fragment: bool = False


@dataclass(frozen=True)
class WatchCancel:
    watch_id: int


@dataclass(frozen=True)
class WatchProgress:
    """A progress_request: answer with the current revision (watch_id -1)."""


WatchRequest = WatchCreate | WatchCancel | WatchProgress
_WATCH_KINDS = ("create_request", "cancel_request", "progress_request")


def parse_watch_request(
    body: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS
) -> WatchRequest | None:
    """One WatchRequest; None for an empty one, which etcd ignores."""
    msg = _top(body, limits)
    kind = msg.one_of(_WATCH_KINDS)
    if kind is None:
        return None
    inner = msg.message(kind)
    assert inner is not None
    if kind == "cancel_request":
        return WatchCancel(watch_id=inner.int64("watch_id"))
    if kind == "progress_request":
        return WatchProgress()
    filters = frozenset(
        _enum(f, inner.where(f"filters[{i}]"), WATCH_FILTERS)
        for i, f in enumerate(inner.items("filters"))
    )
    return WatchCreate(
        key=inner.key() or "\x00",
        range_end=inner.range_end(),
        start_revision=inner.int64("start_revision"),
        progress_notify=inner.boolean("progress_notify"),
        filters=filters,
        prev_kv=inner.boolean("prev_kv"),
        watch_id=inner.int64("watch_id"),
        fragment=inner.boolean("fragment"),
    )


def parse_watch_body(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> list[WatchRequest]:
    """The body of POST /v3/watch: JSON objects one after another, as the
    gateway reads them (curl and etcd3gw send one create_request). Over
    HTTP/1.1 the body is read whole before the stream answers, so later
    cancels come only from clients that send them in the same body; closing
    the connection is how etcd3gw cancels."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EtcdError(Code.INVALID_ARGUMENT, f"the body is not valid UTF-8 ({exc})") from None
    decoder = json.JSONDecoder(parse_constant=_no_constant)
    out: list[WatchRequest] = []
    at, n = 0, 0
    while True:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        if at == len(text):
            break
        try:
            value, at = decoder.raw_decode(text, at)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise EtcdError(
                Code.INVALID_ARGUMENT, f"watch request {n} is not valid JSON: {exc}"
            ) from None
        if not isinstance(value, dict):
            raise EtcdError(
                Code.INVALID_ARGUMENT,
                f"watch request {n} must be a JSON object, not {_json_type(value)}: "
                'for example {"create_request": {"key": "Zm9v"}}',
            )
        request = parse_watch_request(value, limits)
        if request is not None:
            out.append(request)
        n += 1
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def render_watch_response(
    head: Mapping[str, str],
    *,
    watch_id: int = 0,
    created: bool = False,
    canceled: bool = False,
    compact_revision: int = 0,
    cancel_reason: str = "",
    fragment: bool = False,
    events: Iterable[Mapping[str, Any]] = (),
) -> bytes:
    """One WatchResponse as one line of etcd's stream: `{"result": ...}\\n`.

    An event is {"type": "put"|"delete", "kv": KV, "prev_kv": KV?}; a put is
    etcd's default type and so left out, as etcd does, and a delete's kv shows
    only key and mod_revision. etcd3gw skips any message that has "created",
    so events never carry it.
    """
    out: dict[str, Any] = {"header": dict(head)}
    if watch_id:
        out["watch_id"] = str(watch_id)
    if created:
        out["created"] = True
    if canceled:
        out["canceled"] = True
    if compact_revision:
        out["compact_revision"] = str(compact_revision)
    if cancel_reason:
        out["cancel_reason"] = cancel_reason
    if fragment:
        out["fragment"] = True
    rendered = [_event(e) for e in events]
    if rendered:
        out["events"] = rendered
    return orjson.dumps({"result": out}) + b"\n"


def _event(event: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(event.get("type", "put")).upper()
    kv = event["kv"]
    out: dict[str, Any] = {}
    if kind == "DELETE":
        out["type"] = "DELETE"
        out["kv"] = _kv({"key": kv["key"], "mod_revision": kv.get("mod_revision", 0)})
    elif kind == "PUT":
        out["kv"] = _kv(kv)
    else:
        raise ValueError(f"watch event type must be put or delete, not {kind!r}")
    prev = event.get("prev_kv")
    if prev:
        out["prev_kv"] = _kv(prev)
    return out


def render_watch_created(head: Mapping[str, str], watch_id: int) -> bytes:
    return render_watch_response(head, watch_id=watch_id, created=True)


def render_watch_events(
    head: Mapping[str, str], watch_id: int, events: Iterable[Mapping[str, Any]]
) -> bytes:
    """Events for one watcher; every event of one revision goes in one response."""
    return render_watch_response(head, watch_id=watch_id, events=events)


def render_watch_canceled(head: Mapping[str, str], watch_id: int) -> bytes:
    return render_watch_response(head, watch_id=watch_id, canceled=True)


def render_watch_compacted(head: Mapping[str, str], watch_id: int, compact_revision: int) -> bytes:
    """A watch whose start revision is compacted away: created first, then this.
    etcd leaves the revision out of this header."""
    bare = {k: v for k, v in head.items() if k != "revision"}
    return render_watch_response(
        bare, watch_id=watch_id, canceled=True, compact_revision=compact_revision
    )


def render_watch_progress(head: Mapping[str, str]) -> bytes:
    return render_watch_response(head, watch_id=PROGRESS_WATCH_ID)


def render_watch_duplicate_id(head: Mapping[str, str]) -> bytes:
    """A create_request asking for a watch_id already in use on the stream."""
    return render_watch_response(
        head,
        watch_id=PROGRESS_WATCH_ID,
        created=True,
        canceled=True,
        cancel_reason=WATCH_DUPLICATE_ID,
    )
