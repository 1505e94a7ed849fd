"""Histories of client operations, as recorded by the simulator, nemesis runs and users.

A history is what the linearizability checker judges: for every operation, when
the client invoked it, when (and whether) it returned, and what it observed.
Times come from one monotonic clock shared by all clients of a history (real or
simulated); only their order matters to the checker.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeAlias, get_args

OpKind: TypeAlias = Literal["put", "get", "delete", "cas"]
Status: TypeAlias = Literal["ok", "fail", "unknown"]

OP_KINDS: tuple[str, ...] = get_args(OpKind)
STATUSES: tuple[str, ...] = get_args(Status)


class HistoryError(ValueError):
    """A history (or one line of a history file) that is not well formed."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key.

    `value` is what a put (or cas) writes, and what a get observed (None = the key
    was absent); a delete has None. `status` says what the client knows:
    `ok` took effect once between `call` and `ret`; `fail` is known not to have
    taken effect; `unknown` (a timeout, a dropped connection) may have taken
    effect at any time after `call`, or never, so its `ret` is ignored.
    A `cas` writes `value` if the register holds `expected` (None = absent); an
    `ok` cas is one that swapped. Record a cas that found another value as
    `fail`: that is sound, it only drops what the cas saw.
    """

    id: int
    client: str | int
    op: OpKind
    key: str
    value: str | None
    call: float
    ret: float | None
    status: Status
    expected: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of one history line (`expected` only for a cas)."""
        d: dict[str, Any] = {
            "id": self.id,
            "client": self.client,
            "op": self.op,
            "key": self.key,
            "value": self.value,
            "call": self.call,
            "ret": self.ret,
            "status": self.status,
        }
        if self.op == "cas":
            d["expected"] = self.expected
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Operation:
        """Parse and validate one history line's object; raise HistoryError if malformed."""
        if not isinstance(d, dict):
            raise HistoryError(f"an operation must be a JSON object, got {type(d).__name__}")
        missing = [f for f in ("id", "client", "op", "key", "call", "status") if f not in d]
        if missing:
            raise HistoryError(f"missing field(s): {', '.join(missing)}")
        op = cls(
            id=d["id"],
            client=d["client"],
            op=d["op"],
            key=d["key"],
            value=d.get("value"),
            call=d["call"],
            ret=d.get("ret"),
            status=d["status"],
            expected=d.get("expected"),
        )
        op.validate()
        return op

    def validate(self) -> None:
        """Raise HistoryError unless the fields have the documented types and meaning."""
        if self._plainly_valid():
            return
        if not isinstance(self.id, int) or isinstance(self.id, bool):
            raise HistoryError(f"id must be an integer, got {self.id!r}")
        if not isinstance(self.client, str | int) or isinstance(self.client, bool):
            raise HistoryError(f"op {self.id}: client must be a string or integer")
        if self.op not in OP_KINDS:
            raise HistoryError(f"op {self.id}: op must be one of {', '.join(OP_KINDS)}")
        if not isinstance(self.key, str):
            raise HistoryError(f"op {self.id}: key must be a string, got {self.key!r}")
        if self.status not in STATUSES:
            raise HistoryError(f"op {self.id}: status must be one of {', '.join(STATUSES)}")
        for name in ("value", "expected"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise HistoryError(f"op {self.id}: {name} must be a string or null, got {v!r}")
        if self.op in ("put", "cas") and self.value is None:
            raise HistoryError(f"op {self.id}: a {self.op} needs a value")
        if self.op == "delete" and self.value is not None:
            raise HistoryError(f"op {self.id}: a delete has no value")
        if not _is_time(self.call):
            raise HistoryError(f"op {self.id}: call must be a finite number, got {self.call!r}")
        if self.ret is not None:
            if not _is_time(self.ret):
                raise HistoryError(f"op {self.id}: ret must be a finite number or null")
            if self.ret < self.call:
                raise HistoryError(f"op {self.id}: returns ({self.ret}) before its call")
        elif self.status == "ok":
            raise HistoryError(f"op {self.id}: an ok operation needs a ret time")

    def _plainly_valid(self) -> bool:
        # The common case, checked quickly: validating is a good part of checking time.
        call, ret, v = self.call, self.ret, self.value
        return (
            type(self.id) is int
            and type(self.client) in (str, int)
            and type(self.key) is str
            and type(call) in (float, int)
            and call - call == 0  # finite: inf - inf and nan - nan are nan
            and (
                (type(ret) in (float, int) and ret - ret == 0 and ret >= call)  # type: ignore[operator]
                or (ret is None and self.status != "ok")
            )
            and self.status in STATUSES
            and self.expected is None
            and (
                (self.op == "get" and (v is None or type(v) is str))
                or (self.op == "put" and type(v) is str)
                or (self.op == "delete" and v is None)
            )
        )


def _is_time(t: Any) -> bool:
    return isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)


def save(operations: Iterable[Operation], path: str | Path) -> None:
    """Write a history as JSONL, one operation per line, so files stream and diff well."""
    with open(path, "w", encoding="utf-8") as f:
        for op in operations:
            f.write(json.dumps(op.to_dict(), allow_nan=False, ensure_ascii=False))
            f.write("\n")


def load(path: str | Path) -> list[Operation]:
    """Read a JSONL history; raise HistoryError naming the line of any malformed entry."""
    ops: list[Operation] = []
    seen: set[int] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                op = Operation.from_dict(json.loads(line))
            except (json.JSONDecodeError, HistoryError, TypeError) as exc:
                raise HistoryError(f"{path}:{lineno}: {exc}") from None
            if op.id in seen:
                raise HistoryError(f"{path}:{lineno}: duplicate operation id {op.id}")
            seen.add(op.id)
            ops.append(op)
    return ops


class HistoryRecorder:
    """Collects a history from concurrent clients (threads share one recorder).

    `invoke` just before sending a request and `complete` with what came back;
    the clock is injectable so the simulator can record in simulated time.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ops: list[Operation] = []
        self._done: list[bool] = []

    def invoke(
        self,
        client: str | int,
        op: OpKind,
        key: str,
        value: str | None = None,
        *,
        expected: str | None = None,
    ) -> int:
        """Record a call now; return the token to pass to `complete`."""
        if op not in OP_KINDS:
            raise ValueError(f"op must be one of {', '.join(OP_KINDS)}, got {op!r}")
        with self._lock:
            token = len(self._ops)
            written = None if op == "get" else value
            record = Operation(
                token, client, op, key, written, self._clock(), None, "unknown", expected
            )
            self._ops.append(record)
            self._done.append(False)
        return token

    def complete(self, token: int, status: Status, value: str | None = None) -> None:
        """Record the outcome now; `value` is what an ok get observed (None = absent)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        with self._lock:
            if not 0 <= token < len(self._ops):
                raise KeyError(f"unknown token {token!r}")
            if self._done[token]:
                raise ValueError(f"operation {token} was already completed")
            record = self._ops[token]
            observed = value if record.op == "get" and status == "ok" else record.value
            self._ops[token] = replace(record, ret=self._clock(), status=status, value=observed)
            self._done[token] = True

    def operations(self) -> list[Operation]:
        """A snapshot; calls not completed yet appear as `unknown`, which is what they are."""
        with self._lock:
            return list(self._ops)

    def save(self, path: str | Path) -> None:
        """Write the history so far as JSONL (see `save`)."""
        save(self.operations(), path)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)
