"""Transactions: the compares and ops of POST /v3/kv/txn, and its answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .wire import KeyValue, encode, header_revision, key_range, key_value, malformed, number

CompareTarget = Literal["value", "version", "create", "mod", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]
_TARGETS = {
    "value": ("VALUE", "value"),
    "version": ("VERSION", "version"),
    "create": ("CREATE", "create_revision"),
    "mod": ("MOD", "mod_revision"),
    "lease": ("LEASE", "lease"),
}
_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


@dataclass(frozen=True)
class Compare:
    """One condition of a txn, e.g. `Compare("k", "value", "==", "x")`, or
    `Compare("k", "version", "==", 0)` for "k does not exist".

    `target`: value, version, create (revision), mod (revision) or lease;
    `op`: ==, !=, < or >. A value compare on a missing key is false, as in
    etcd. With `prefix` or `range_end` every key in the range must match.
    """

    key: str
    target: CompareTarget
    op: CompareOp
    operand: str | int
    range_end: str | None = None
    prefix: bool = False

    def wire(self) -> dict[str, Any]:
        if self.target not in _TARGETS:
            raise ValueError(
                f"compare target must be one of {sorted(_TARGETS)}, not {self.target!r}"
            )
        if self.op not in _RESULTS:
            raise ValueError(f"compare op must be one of {sorted(_RESULTS)}, not {self.op!r}")
        target, field = _TARGETS[self.target]
        out: dict[str, Any] = key_range(self.key, self.prefix, self.range_end)
        out["target"], out["result"] = target, _RESULTS[self.op]
        if self.target == "value":
            if not isinstance(self.operand, str):
                raise TypeError(f"a value compare takes a str, got {self.operand!r}")
            out[field] = encode(self.operand)
        else:
            if isinstance(self.operand, bool) or not isinstance(self.operand, int):
                raise TypeError(f"a {self.target} compare takes an int, got {self.operand!r}")
            out[field] = self.operand
        return out


@dataclass(frozen=True)
class Get:
    """Read a key (or a prefix, or [key, range_end)) inside a txn."""

    key: str
    range_end: str | None = None
    prefix: bool = False

    def wire(self) -> dict[str, Any]:
        return {"request_range": key_range(self.key, self.prefix, self.range_end)}


@dataclass(frozen=True)
class Put:
    """Set a key inside a txn (attached to `lease` if not 0)."""

    key: str
    value: str
    lease: int = 0
    prev_kv: bool = False

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = key_range(self.key, False, None)
        out["value"] = encode(self.value)
        if self.lease:
            out["lease"] = self.lease
        if self.prev_kv:
            out["prev_kv"] = True
        return {"request_put": out}


@dataclass(frozen=True)
class Delete:
    """Delete a key (or a prefix, or [key, range_end)) inside a txn."""

    key: str
    range_end: str | None = None
    prefix: bool = False
    prev_kv: bool = False

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = key_range(self.key, self.prefix, self.range_end)
        if self.prev_kv:
            out["prev_kv"] = True
        return {"request_delete_range": out}


@dataclass(frozen=True)
class Txn:
    """A nested txn: its own compares and branches, inside a branch."""

    compare: Sequence[Compare] = ()
    success: Sequence[Op] = ()
    failure: Sequence[Op] = ()

    def wire(self) -> dict[str, Any]:
        return {"request_txn": txn_body(self.compare, self.success, self.failure)}


Op = Get | Put | Delete | Txn


def txn_body(
    compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, items in (("compare", compare), ("success", success), ("failure", failure)):
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise TypeError(f"{name} must be a list, got {type(items).__name__}")
        wired = []
        for item in items:
            if name == "compare" and not isinstance(item, Compare):
                raise TypeError(f"compare takes Compare(...) items, got {item!r}")
            if name != "compare" and not isinstance(item, (Get, Put, Delete, Txn)):
                raise TypeError(f"{name} takes Get, Put, Delete or Txn items, got {item!r}")
            wired.append(item.wire())
        if wired:
            body[name] = wired
    return body


def read_only(ops: Sequence[Op]) -> bool:
    """True when no op (nested ones included) writes: such a txn may be sent again."""
    for op in ops:
        if isinstance(op, Txn):
            if not (read_only(op.success) and read_only(op.failure)):
                return False
        elif not isinstance(op, Get):
            return False
    return True


@dataclass(frozen=True)
class OpResponse:
    """One op's answer in a txn. `kind`: "range", "put", "delete_range" or "txn".
    `kvs`: the keys a range read, or the previous values a put or delete_range
    replaced (when it asked for prev_kv). `count`: keys in the range (range),
    keys deleted (delete_range). `txn`: a nested txn's result."""

    kind: str
    kvs: tuple[KeyValue, ...] = ()
    count: int = 0
    txn: TxnResult | None = None


@dataclass(frozen=True)
class TxnResult:
    """`succeeded`: the compares held (the success branch ran); `revision`: the
    store revision after the txn; `responses`: one per op of the branch that ran."""

    succeeded: bool
    revision: int
    responses: tuple[OpResponse, ...] = ()


def parse_txn(data: dict[str, Any], revision: int | None = None) -> TxnResult:
    if revision is None:
        revision = header_revision(data)
    responses = []
    for item in data.get("responses") or ():
        if not isinstance(item, dict) or len(item) != 1:
            raise malformed(f"a txn response holds one result, got {item!r}")
        [(name, body)] = item.items()
        if not isinstance(body, dict):
            raise malformed(f"a txn response is an object, got {body!r}")
        at = header_revision(body) or revision
        if name == "response_range":
            kvs = tuple(key_value(kv, at) for kv in body.get("kvs") or ())
            responses.append(OpResponse("range", kvs, number(body.get("count"))))
        elif name == "response_put":
            prev = body.get("prev_kv")
            responses.append(OpResponse("put", (key_value(prev, at),) if prev else ()))
        elif name == "response_delete_range":
            kvs = tuple(key_value(kv, at) for kv in body.get("prev_kvs") or ())
            responses.append(OpResponse("delete_range", kvs, number(body.get("deleted"))))
        elif name == "response_txn":
            responses.append(OpResponse("txn", txn=parse_txn(body, revision)))
        else:
            raise malformed(f"unknown txn response {name!r}")
    return TxnResult(bool(data.get("succeeded")), revision, tuple(responses))
