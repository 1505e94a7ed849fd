"""The etcd-style requests (range, put, delete-range, txn, compact), validated.

Every check that does not depend on the store's state lives here, so a
malformed entry is refused the same way on every replica before anything is
touched: shapes, 64-bit integers, UTF-8 text, etcd's rules on the options
(`ignore_value` with a value, ...), at most `MAX_TXN_OPS` operations per txn
branch and no key written twice in one txn. What depends on the state (does
the lease exist, does the key exist for `ignore_value`, is a revision
compacted) is the store's business (kv/txn.py).

The shapes are the ones fixed in the contract between the store and the etcd
gateway (see `KVStore.range` and `KVStore.apply`); the txn limits follow etcd
3.4's checks in its API layer (`checkTxnRequest`, `checkIntervals`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

MAX_INT = (1 << 63) - 1
MIN_INT = -(1 << 63)
MAX_TXN_OPS = 128  # etcd's --max-txn-ops default

TARGETS = ("VERSION", "CREATE", "MOD", "VALUE", "LEASE")  # proto order: VERSION is 0
RESULTS = ("EQUAL", "GREATER", "LESS", "NOT_EQUAL")
# Which field of a compare holds the operand, by target.
OPERAND = {
    "VALUE": "value",
    "VERSION": "version",
    "CREATE": "create_revision",
    "MOD": "mod_revision",
    "LEASE": "lease",
}
SORT_ORDERS = ("NONE", "ASCEND", "DESCEND")
SORT_TARGETS = ("KEY", "VERSION", "CREATE", "MOD", "VALUE")


class InvalidCommand(ValueError):
    """A log entry that is not a well-formed kv command; `code` says which rule it broke."""

    def __init__(self, message: str, code: str = "invalid_command") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Range:
    key: str
    range_end: str | None = None  # None: the key alone; "\x00": every key >= key
    revision: int = 0  # <= 0: the current revision
    limit: int = 0  # <= 0: no limit
    keys_only: bool = False
    count_only: bool = False
    sort_order: str = "NONE"
    sort_target: str = "KEY"
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: str
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(frozen=True, slots=True)
class DeleteRange:
    key: str
    range_end: str | None = None
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class Compare:
    key: str
    range_end: str | None
    target: str
    result: str
    operand: str | int


@dataclass(frozen=True, slots=True)
class Txn:
    compare: tuple[Compare, ...]
    success: tuple[Op, ...]
    failure: tuple[Op, ...]


Op = Union[Range, Put, DeleteRange, Txn]  # noqa: UP007  (a runtime alias used before 3.12)


@dataclass(frozen=True, slots=True)
class Compact:
    revision: int


# ---------------------------------------------------------------- field checks


def check_text(name: str, text: Any, *, allow_empty: bool = True) -> str:
    if not isinstance(text, str):
        raise InvalidCommand(f"{name} must be a string, got {type(text).__name__}")
    if not allow_empty and not text:
        raise InvalidCommand(f"{name} must not be empty (etcdserver: key is not provided)")
    # json.loads accepts lone surrogates ("\ud800"); such a str is not UTF-8 text and would
    # only fail later, when some node writes a snapshot. Reject it up front, everywhere alike.
    # (isascii is a flag read; encoding copies the text, which for 1 MiB takes ~100 us.)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidCommand(f"{name} is not valid UTF-8 text") from None
    return text


def check_int(name: str, value: Any, lo: int = MIN_INT, hi: int = MAX_INT) -> int:
    # bool is an int subclass; true as a revision is a client bug, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidCommand(f"{name} must be an integer from {lo} to {hi}, got {value!r}")
    return value


def _opt_int(body: dict[str, Any], name: str, lo: int = MIN_INT) -> int:
    value = body.get(name)
    return 0 if value is None else check_int(name, value, lo)


def _opt_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidCommand(f"{name} must be true or false, got {value!r}")
    return value


def _range_end(body: dict[str, Any]) -> str | None:
    end = body.get("range_end")
    if end is None or end == "":
        return None
    return check_text("range_end", end)


def _choice(body: dict[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = body.get(name)
    if value is None:
        return choices[0]  # the proto default
    if not isinstance(value, str) or value not in choices:
        raise InvalidCommand(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _object(name: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidCommand(f"{name} must be a JSON object, got {type(body).__name__}")
    return body


# ---------------------------------------------------------------- requests


def parse_range(body: Any) -> Range:
    body = _object("a range request", body)
    return Range(
        key=check_text("key", body.get("key"), allow_empty=False),
        range_end=_range_end(body),
        revision=_opt_int(body, "revision"),
        limit=_opt_int(body, "limit"),
        keys_only=_opt_bool(body, "keys_only"),
        count_only=_opt_bool(body, "count_only"),
        sort_order=_choice(body, "sort_order", SORT_ORDERS),
        sort_target=_choice(body, "sort_target", SORT_TARGETS),
        min_mod_revision=_opt_int(body, "min_mod_revision"),
        max_mod_revision=_opt_int(body, "max_mod_revision"),
        min_create_revision=_opt_int(body, "min_create_revision"),
        max_create_revision=_opt_int(body, "max_create_revision"),
    )


def parse_put(body: Any) -> Put:
    body = _object("a put request", body)
    key = check_text("key", body.get("key"), allow_empty=False)
    ignore_value = _opt_bool(body, "ignore_value")
    ignore_lease = _opt_bool(body, "ignore_lease")
    value = body.get("value")
    if ignore_value:
        if value not in (None, ""):
            raise InvalidCommand("ignore_value with a value (etcdserver: value is provided)")
        value = ""
    value = check_text("value", value)
    lease = _opt_int(body, "lease")
    if ignore_lease and lease:
        raise InvalidCommand("ignore_lease with a lease (etcdserver: lease is provided)")
    return Put(key, value, lease, _opt_bool(body, "prev_kv"), ignore_value, ignore_lease)


def parse_delete_range(body: Any) -> DeleteRange:
    body = _object("a delete_range request", body)
    key = check_text("key", body.get("key"), allow_empty=False)
    return DeleteRange(key, _range_end(body), _opt_bool(body, "prev_kv"))


def parse_compare(body: Any) -> Compare:
    body = _object("a compare", body)
    key = check_text("compare key", body.get("key"), allow_empty=False)
    target = _choice(body, "target", TARGETS)
    result = _choice(body, "result", RESULTS)
    raw = body.get(OPERAND[target])
    operand: str | int
    if target == "VALUE":
        operand = "" if raw is None else check_text("compare value", raw)
    else:
        operand = 0 if raw is None else check_int(OPERAND[target], raw)
    return Compare(key, _range_end(body), target, result, operand)


_OP_PARSERS: dict[str, Callable[[Any], Op]] = {
    "request_range": parse_range,
    "request_put": parse_put,
    "request_delete_range": parse_delete_range,
}


def _parse_op(body: Any, budget: int) -> Op:
    body = _object("a txn operation", body)
    kinds = [
        k
        for k in ("request_range", "request_put", "request_delete_range", "request_txn")
        if body.get(k) is not None
    ]
    if len(kinds) != 1:
        raise InvalidCommand(
            "a txn operation must hold exactly one of request_range, request_put, "
            "request_delete_range, request_txn"
        )
    kind = kinds[0]
    if kind == "request_txn":
        return _parse_txn(body[kind], budget)
    return _OP_PARSERS[kind](body[kind])


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidCommand(f"{name} must be a JSON array, got {type(value).__name__}")
    return value


def _parse_txn(body: Any, budget: int) -> Txn:
    """etcd's checkTxnRequest: a branch or the compares may hold at most `budget`
    entries, and a nested txn gets what its parent left."""
    body = _object("a txn request", body)
    compare, success, failure = (_list(body, n) for n in ("compare", "success", "failure"))
    used = max(len(compare), len(success), len(failure))
    if used > budget:
        raise InvalidCommand("etcdserver: too many operations in txn request", code="too_many_ops")
    return Txn(
        tuple(parse_compare(c) for c in compare),
        tuple(_parse_op(op, budget - used) for op in success),
        tuple(_parse_op(op, budget - used) for op in failure),
    )


def parse_txn(body: Any) -> Txn:
    """Validate a whole txn: shapes, operation counts and etcd's duplicate-key rule."""
    txn = _parse_txn(body, MAX_TXN_OPS)
    _check_intervals(txn.success)
    _check_intervals(txn.failure)
    return txn


def parse_compact(body: Any) -> Compact:
    body = _object("a compact request", body)
    return Compact(check_int("revision", body.get("revision"), lo=0))


# ---------------------------------------------------------------- duplicate keys

Interval = tuple[str, str | None]  # [key, range_end), or the key alone if range_end is None


def _in(key: str, interval: Interval) -> bool:
    # etcd 3.4 compares range ends as plain bytes, so a delete to "\x00" (every key
    # from `key`) covers nothing here: etcd accepts a put beside it, and so do we.
    lo, hi = interval
    return key == lo if hi is None else lo <= key < hi


def _duplicate() -> InvalidCommand:
    return InvalidCommand("etcdserver: duplicate key given in txn request", code="duplicate_key")


def _check_intervals(ops: tuple[Op, ...]) -> tuple[set[str], list[Interval]]:
    """etcd's checkIntervals: no key put twice, and no key both put and deleted, along
    any path through the nested txns (a success and a failure branch exclude each
    other, so they may write the same key). Returns the puts and deletes below."""
    dels: list[Interval] = [(op.key, op.range_end) for op in ops if isinstance(op, DeleteRange)]
    puts: set[str] = set()
    for op in ops:
        if not isinstance(op, Txn):
            continue
        puts_then, dels_then = _check_intervals(op.success)
        puts_else, dels_else = _check_intervals(op.failure)
        for key in sorted(puts_then):
            if key in puts or any(_in(key, d) for d in dels):
                raise _duplicate()
            puts.add(key)
        for key in sorted(puts_else):
            if (key in puts and key not in puts_then) or any(_in(key, d) for d in dels):
                raise _duplicate()
            puts.add(key)
        dels += dels_then + dels_else
    for op in ops:
        if isinstance(op, Put):
            if op.key in puts or any(_in(op.key, d) for d in dels):
                raise _duplicate()
            puts.add(op.key)
    return puts, dels
