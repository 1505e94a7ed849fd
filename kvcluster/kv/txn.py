"""etcd's transactions, applied atomically at one revision, as etcd 3.4 applies them.

1. Every compare, nested ones included, is evaluated against the state before
   the txn: that picks the branch at every level (etcd's `compareToPath`).
2. The chosen operations are checked against that same state: a put's lease
   must exist, a put with ignore_value/ignore_lease needs the key, a range at a
   revision must be neither compacted nor in the future. One failure fails the
   whole txn with that error and changes nothing.
3. The operations run in order. Nothing can fail any more, so there is no
   rollback: writes share the revision `store.revision + 1` (their order is
   the history's order), a range sees the writes made before it in the txn,
   and the revision moves only if something changed.

Response revisions follow etcd: a put reports the txn's revision, a range or
a delete the txn's revision if something has changed so far and the old one
if not; a nested txn's response has none (etcd leaves its header empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .history import Row, kv_dict, span
from .ops import Compare, DeleteRange, Op, Put, Range, Txn
from .results import KEY_NOT_FOUND, LEASE_NOT_FOUND, delete_range_result, error, put_result

if TYPE_CHECKING:
    from .store import KVStore

SORT_ORDERS = ("NONE", "ASCEND", "DESCEND")
# Row positions of each sort target (kv/history.py's Row).
SORT_KEYS = {"KEY": 0, "VALUE": 1, "CREATE": 2, "MOD": 3, "VERSION": 4}
_INT_FIELD = {"VERSION": 4, "CREATE": 2, "MOD": 3, "LEASE": 5}


@dataclass(slots=True)
class Plan:
    """The branch a txn takes, and the plans of the txns nested in that branch."""

    succeeded: bool
    ops: tuple[Op, ...]
    nested: list[Plan | None]


def _holds(c: Compare, row: Row) -> bool:
    if c.target == "VALUE":
        a: Any = row[1]
    else:
        a = row[_INT_FIELD[c.target]]
    b = c.operand
    if c.result == "EQUAL":
        return bool(a == b)
    if c.result == "NOT_EQUAL":
        return bool(a != b)
    if c.result == "GREATER":
        return bool(a > b)
    return bool(a < b)


_ABSENT: Row = ("", "", 0, 0, 0, 0)


def compare(store: KVStore, c: Compare) -> bool:
    """etcd's applyCompare: every key in the range must satisfy `c`; an empty range
    compares a zero KV (version 0, ...), except on VALUE, which then fails."""
    i, j = span(store._keys, c.key, c.range_end)
    if i == j:
        return c.target != "VALUE" and _holds(c, _ABSENT)
    rows = store._rows
    return all(_holds(c, rows[n]) for n in range(i, j))


def plan(store: KVStore, txn: Txn) -> Plan:
    succeeded = all(compare(store, c) for c in txn.compare)
    ops = txn.success if succeeded else txn.failure
    nested = [plan(store, op) if isinstance(op, Txn) else None for op in ops]
    return Plan(succeeded, ops, nested)


def _walk(p: Plan) -> list[Op]:
    out: list[Op] = []
    for op, sub in zip(p.ops, p.nested, strict=True):
        if sub is not None:
            out += _walk(sub)
        else:
            out.append(op)
    return out


def check(store: KVStore, p: Plan) -> dict[str, Any] | None:
    """The error that fails the whole txn, if any (etcd checks puts, then ranges)."""
    ops = _walk(p)
    for op in ops:
        if isinstance(op, Put):
            if (op.ignore_value or op.ignore_lease) and store._find(op.key) is None:
                return error("key_not_found", KEY_NOT_FOUND)
            if op.lease and op.lease not in store.leases:
                return error("lease_not_found", LEASE_NOT_FOUND)
    for op in ops:
        if isinstance(op, Range):
            refused = store.check_range(op)
            if refused is not None:
                return refused
    return None


class _Run:
    """One txn's execution: its revision and whether it has changed anything yet."""

    __slots__ = ("base", "changed", "store")

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.base = store.revision
        self.changed = False

    @property
    def current(self) -> int:
        return self.base + 1 if self.changed else self.base

    def run(self, p: Plan) -> list[dict[str, Any]]:
        store, rev = self.store, self.base + 1
        responses: list[dict[str, Any]] = []
        for op, sub in zip(p.ops, p.nested, strict=True):
            if isinstance(op, Range):
                responses.append({"response_range": store.do_range(op, self.current)})
            elif isinstance(op, Put):
                row, prev = store.write_put(
                    op.key, op.value, op.lease, op.ignore_value, op.ignore_lease, rev
                )
                self.changed = True
                responses.append({"response_put": put_result(row, prev, op.prev_kv)})
            elif isinstance(op, DeleteRange):
                prevs = store.write_delete_range(op.key, op.range_end, rev)
                self.changed = self.changed or bool(prevs)
                result = delete_range_result(prevs, op.prev_kv, self.current)
                responses.append({"response_delete_range": result})
            else:
                assert sub is not None
                nested = {"succeeded": sub.succeeded, "responses": self.run(sub)}
                responses.append({"response_txn": nested})
        return responses


def apply_txn(store: KVStore, txn: Txn) -> dict[str, Any]:
    """Apply a validated txn (see the module docstring); never raises."""
    p = plan(store, txn)
    refused = check(store, p)
    if refused is not None:
        return refused
    run = _Run(store)
    responses = run.run(p)
    store.revision = run.current
    return {"revision": store.revision, "succeeded": p.succeeded, "responses": responses}


def finish_range(req: Range, rows: list[Row], current: int) -> dict[str, Any]:
    """Filter, sort and cut the rows of a range as etcd does: `count` is every key in
    the range before the min/max filters; sorting is stable, so ties keep key order."""
    count = len(rows)
    if req.count_only:
        return {"revision": current, "kvs": [], "count": count, "more": False}
    if req.max_mod_revision:
        rows = [r for r in rows if r[3] <= req.max_mod_revision]
    if req.min_mod_revision:
        rows = [r for r in rows if r[3] >= req.min_mod_revision]
    if req.max_create_revision:
        rows = [r for r in rows if r[2] <= req.max_create_revision]
    if req.min_create_revision:
        rows = [r for r in rows if r[2] >= req.min_create_revision]
    order = req.sort_order
    if order == "NONE" and req.sort_target != "KEY":
        order = "ASCEND"  # etcd: a sort target alone sorts ascending
    if order != "NONE":
        field = SORT_KEYS[req.sort_target]
        if field == 0:
            if order == "DESCEND":
                rows = rows[::-1]
        else:
            rows = sorted(rows, key=lambda r: r[field], reverse=order == "DESCEND")
    more = 0 < req.limit < len(rows)
    if req.limit > 0:
        rows = rows[: req.limit]
    return {
        "revision": current,
        "kvs": [kv_dict(r, req.keys_only) for r in rows],
        "count": count,
        "more": more,
    }
