"""Checking watchers against the committed history (etcd's watch guarantees).

A watch promises each watcher exactly the changes to its keys, from its start
revision on: in revision order, none missed, none repeated, each as it was
committed, and all the changes of one revision in one response. Under faults
a watcher may be served by several nodes in turn (it reconnects with
start_revision = the last revision it saw + 1), which is where a gap or a
duplicate would come from.

The judge is the committed history: every change, in revision order, as the
cluster's members hold it once the faults are healed (read back from each live
member; they must agree). Each watcher's recorded changes must then be exactly
the slice of it between the watcher's start revision and the last revision it
was sent everything up to, restricted to the keys it watched. A second check
ties the history to what clients were told: a write acknowledged as done must
be in it (else it was lost), and one reported as not done must not be.

Pure functions over plain records, so a recorded run can be checked again,
and so the checks can be tested on histories made up to break them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from .history import Operation

__all__ = [
    "Change",
    "WatchRecord",
    "WatchResult",
    "WatcherLog",
    "WatcherVerdict",
    "check_watches",
    "check_writes",
    "in_range",
    "load_record",
    "prefix_end",
    "save_record",
]

ChangeType: TypeAlias = Literal["PUT", "DELETE"]
_CONTEXT = 3  # changes shown on each side of a violation


@dataclass(frozen=True, slots=True)
class Change:
    """One event of the history: at `revision`, `key` was put to `value`, or
    deleted (`value` None)."""

    revision: int
    type: ChangeType
    key: str
    value: str | None = None

    def __str__(self) -> str:
        what = (
            f"PUT {self.key!r} = {self.value!r}" if self.type == "PUT" else f"DELETE {self.key!r}"
        )
        return f"r{self.revision} {what}"

    def to_list(self) -> list[Any]:
        return [self.revision, self.type, self.key, self.value]

    @classmethod
    def from_list(cls, item: Sequence[Any]) -> Change:
        revision, type_, key, value = item
        if type_ not in ("PUT", "DELETE"):
            raise ValueError(f"a change's type is PUT or DELETE, got {type_!r}")
        return cls(int(revision), type_, str(key), None if value is None else str(value))


def prefix_end(prefix: str) -> str:
    """The range_end that makes [prefix, range_end) every key starting with
    `prefix`, as etcd computes it ("\\0", every key, for an empty prefix)."""
    data = bytearray(prefix.encode())
    while data and data[-1] == 0xFF:
        data.pop()
    if not data:
        return "\0"
    data[-1] += 1
    return data.decode(errors="surrogateescape")


def in_range(key: str, start: str, range_end: str | None) -> bool:
    """etcd's key ranges: range_end None is `start` alone, "\\0" every key from
    `start` on, else [start, range_end). (UTF-8 byte order is code point order.)"""
    if range_end is None:
        return key == start
    if range_end == "\0":
        return key >= start
    return start <= key < range_end


@dataclass
class WatcherLog:
    """What one watcher was sent, as it recorded it.

    `start_revision` is the first revision it asked for; `end_revision` the
    revision up to which it was sent everything when it stopped (the client's
    last seen revision). `batches`, when known, gives for each change the
    number of the response it came in (empty: not recorded). `error` says how
    it ended if it did not stop when asked (compacted away, never caught up):
    what it got is still checked, but it cannot pass.
    """

    name: str
    key: str
    range_end: str | None
    start_revision: int
    end_revision: int
    changes: list[Change] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    reconnects: int = 0
    served_by: list[str] = field(default_factory=list)  # the endpoints, in the order used
    error: str | None = None

    def describe(self) -> str:
        if self.range_end is None:
            what = f"key {self.key!r}"
        elif self.range_end == prefix_end(self.key):
            what = f"prefix {self.key!r}"
        else:
            what = f"range [{self.key!r}, {self.range_end!r})"
        served = " -> ".join(self.served_by) if self.served_by else "?"
        return (
            f"watcher {self.name} ({what} from revision {self.start_revision}; "
            f"served by {served}; {self.reconnects} reconnects; "
            f"sent everything up to revision {self.end_revision})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "range_end": self.range_end,
            "start_revision": self.start_revision,
            "end_revision": self.end_revision,
            "changes": [c.to_list() for c in self.changes],
            "batches": self.batches,
            "reconnects": self.reconnects,
            "served_by": self.served_by,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WatcherLog:
        return cls(
            name=d["name"],
            key=d["key"],
            range_end=d["range_end"],
            start_revision=d["start_revision"],
            end_revision=d["end_revision"],
            changes=[Change.from_list(c) for c in d["changes"]],
            batches=list(d.get("batches", [])),
            reconnects=d.get("reconnects", 0),
            served_by=list(d.get("served_by", [])),
            error=d.get("error"),
        )


@dataclass(frozen=True)
class WatcherVerdict:
    """One watcher's verdict: ok True (exactly its slice), False (a violation,
    `problem` says which), None (what it got is right, but it ended early)."""

    name: str
    ok: bool | None
    checked: int  # changes of the committed history its slice holds
    problem: str = ""


@dataclass
class WatchResult:
    """The verdict on a run's watchers and acknowledged writes."""

    ok: bool | None
    watchers: list[WatcherVerdict]
    checked: int  # changes compared, over all watchers
    reconnects: int
    last_revision: int
    members: list[str]  # whose copies of the committed history were compared
    disagreement: str = ""  # how two members' copies differ, if they do
    write_problems: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok is True

    def summary(self) -> str:
        verdict = {True: "ok", False: "VIOLATED", None: "undecided"}[self.ok]
        return (
            f"watch: {verdict}; {len(self.watchers)} watchers, {self.checked} events checked "
            f"against revisions 1-{self.last_revision} (the copies of {len(self.members)} members "
            f"{'DISAGREE' if self.disagreement else 'agree'}), {self.reconnects} reconnects"
        )

    def explain(self) -> str:
        """The summary, then each problem: which watcher, which revision, expected vs seen."""
        lines = [self.summary()]
        if self.disagreement:
            lines.append(self.disagreement)
        for v in self.watchers:
            if v.ok is not True:
                lines.append(v.problem)
        if self.write_problems:
            lines.append(f"{len(self.write_problems)} acknowledged writes disagree with it:")
            lines += ["  " + p for p in self.write_problems[:20]]
            if len(self.write_problems) > 20:
                lines.append(f"  and {len(self.write_problems) - 20} more")
        return "\n".join(lines)


# ---- the committed history -----------------------------------------------------------


def _validate(history: Sequence[Change], last_revision: int) -> None:
    previous = 0
    for c in history:
        if c.revision < previous:
            raise ValueError(f"the committed history goes back from r{previous} to r{c.revision}")
        if c.revision > last_revision:
            raise ValueError(f"{c} is after the history's last revision {last_revision}")
        previous = c.revision


def _disagreement(copies: Mapping[str, Sequence[Change]]) -> str:
    """How the members' copies of the history differ ('' if they do not)."""
    names = list(copies)
    first = names[0]
    reference = copies[first]
    for other in names[1:]:
        theirs = copies[other]
        if list(theirs) == list(reference):
            continue
        for i, (a, b) in enumerate(zip(reference, theirs, strict=False)):
            if a != b:
                return (
                    f"members disagree on the history: at event {i}, "
                    f"{first} has {a}, {other} has {b}"
                )
        i = min(len(reference), len(theirs))
        longer, shorter = (first, other) if len(reference) > len(theirs) else (other, first)
        extra = (reference if longer == first else theirs)[i]
        return (
            f"members disagree on the history: {longer} has {extra}"
            f" (event {i}), {shorter}'s copy ends before it"
        )
    return ""


# ---- one watcher ---------------------------------------------------------------------


def _window(changes: Sequence[Change], at: int, mark: str) -> list[str]:
    lo, hi = max(0, at - _CONTEXT), min(len(changes), at + _CONTEXT + 1)
    out = []
    for i in range(lo, hi):
        out.append(f"    {mark if i == at else '  '} {changes[i]}")
    if at >= len(changes):
        out.append(f"    {mark} (nothing)")
    return out


def _check_watcher(log: WatcherLog, history: Sequence[Change], last: int) -> WatcherVerdict:
    end = min(log.end_revision, last)
    expected = [
        c
        for c in history
        if log.start_revision <= c.revision <= end and in_range(c.key, log.key, log.range_end)
    ]
    seen = log.changes
    head = log.describe()

    def fail(what: str, i: int, j: int) -> WatcherVerdict:
        lines = [f"{head}: {what}", "  the committed history there (>> expected next):"]
        lines += _window(expected, j, ">>")
        lines += ["  what it was sent (>> the change in question):"]
        lines += _window(seen, i, ">>")
        return WatcherVerdict(log.name, False, len(expected), "\n".join(lines))

    if log.end_revision > last:
        extra = next((c for c in seen if c.revision > last), None)
        if extra is not None:
            i = seen.index(extra)
            return fail(
                f"revision {extra.revision} is after the last committed revision {last}"
                f" (sent {extra})",
                i,
                len(expected),
            )
    matched: set[Change] = set()
    j = 0
    for i, c in enumerate(seen):
        if i and c.revision < seen[i - 1].revision:
            kind = "a duplicate" if c in matched else "out of order"
            return fail(
                f"{kind} at revision {c.revision}: {c} came after {seen[i - 1]}",
                i,
                j,
            )
        if c.revision < log.start_revision:
            return fail(f"{c} is before its start revision {log.start_revision}", i, j)
        if c.revision > end:
            return fail(f"{c} is after revision {end}, up to which it was sent everything", i, j)
        if j == len(expected):
            kind = "a duplicate of" if c in matched else "not in the committed history:"
            return fail(f"{kind} {c}", i, j)
        x = expected[j]
        if c == x:
            matched.add(c)
            j += 1
            continue
        if c in matched:
            return fail(f"a duplicate: {c} again (expected {x} next)", i, j)
        if c.revision > x.revision:
            return fail(f"a gap: {x} was never sent (the next it was sent is {c})", i, j)
        if c.revision < x.revision:
            return fail(f"not in the committed history: {c} (expected {x} next)", i, j)
        if c in expected[j:] and c.revision == x.revision:
            if x in seen[i:]:
                return fail(f"revision {c.revision} out of order: {c} before {x}", i, j)
            return fail(f"a gap: {x} was never sent (the next it was sent is {c})", i, j)
        return fail(f"a wrong event at revision {c.revision}: expected {x}, sent {c}", i, j)
    if j < len(expected):
        return fail(
            f"a gap: {expected[j]} was never sent, though it was sent everything up to "
            f"revision {log.end_revision}",
            len(seen),
            j,
        )
    if log.batches:
        if len(log.batches) != len(seen):
            raise ValueError(
                f"watcher {log.name}: {len(log.batches)} batches for {len(seen)} events"
            )
        for i in range(1, len(seen)):
            if seen[i].revision == seen[i - 1].revision and log.batches[i] != log.batches[i - 1]:
                return fail(
                    f"revision {seen[i].revision} split over two responses"
                    f" ({log.batches[i - 1]} and {log.batches[i]})",
                    i,
                    i,
                )
    if log.error:
        return WatcherVerdict(
            log.name,
            None,
            len(expected),
            f"{head}: ended early ({log.error}); what it got is right",
        )
    return WatcherVerdict(log.name, True, len(expected))


# ---- acknowledged writes -------------------------------------------------------------


def check_writes(
    history: Sequence[Change],
    operations: Iterable[Operation],
    *,
    revisions: Mapping[int, int] | None = None,
    deleted: Collection[int] = (),
) -> list[str]:
    """What clients were told against what the history holds; the problems found.

    An ok put or cas (values unique per key, as the checker wants) must be a
    PUT of its value on its key (at its revision, if `revisions` gives the
    revision its answer named: op id -> revision), else the write was lost. A
    put or cas reported failed must not be there. An ok delete listed in
    `deleted` (it said it deleted something) must be a DELETE on its key at its
    revision if known, else counted: a key needs as many DELETEs as such acks.
    (Other deletes may have found nothing, which leaves no event.)
    """
    revisions = revisions or {}
    puts: dict[tuple[str, str | None], list[Change]] = {}
    at: dict[tuple[int, str], Change] = {}
    deletes: Counter[str] = Counter()
    for c in history:
        at[(c.revision, c.key)] = c
        if c.type == "PUT":
            puts.setdefault((c.key, c.value), []).append(c)
        else:
            deletes[c.key] += 1
    problems: list[str] = []
    acked_deletes: Counter[str] = Counter()
    for op in operations:
        revision = revisions.get(op.id)
        if op.op in ("put", "cas"):
            found = puts.get((op.key, op.value), [])
            if op.status == "ok":
                if not found:
                    problems.append(
                        f"lost write: op #{op.id} ({op.op} {op.key!r} = {op.value!r}) "
                        f"was acknowledged, and no revision holds it"
                    )
                elif revision is not None and all(c.revision != revision for c in found):
                    where = ", ".join(f"r{c.revision}" for c in found)
                    problems.append(
                        f"op #{op.id} ({op.op} {op.key!r} = {op.value!r}) was "
                        f"acknowledged at revision {revision}, but the history has it at {where}"
                    )
            elif op.status == "fail" and found:
                problems.append(
                    f"op #{op.id} ({op.op} {op.key!r} = {op.value!r}) was reported "
                    f"as not done, but {found[0]} holds it"
                )
        elif op.op == "delete" and op.status == "ok" and op.id in deleted:
            if revision is None:
                acked_deletes[op.key] += 1
                continue
            there = at.get((revision, op.key))
            if there is None or there.type != "DELETE":
                problems.append(
                    f"lost write: op #{op.id} (delete {op.key!r}) was acknowledged "
                    f"at revision {revision}, where the history has "
                    f"{there if there is not None else 'no change to that key'}"
                )
    for key, n in sorted(acked_deletes.items()):
        if n > deletes[key]:
            problems.append(
                f"lost write: {n} deletes of {key!r} said they deleted it, "
                f"the history has {deletes[key]} DELETEs of it"
            )
    return problems


# ---- the whole check ------------------------------------------------------------------


def check_watches(
    copies: Mapping[str, Sequence[Change]],
    last_revision: int,
    watchers: Sequence[WatcherLog],
    operations: Iterable[Operation] = (),
    *,
    revisions: Mapping[int, int] | None = None,
    deleted: Collection[int] = (),
) -> WatchResult:
    """Check every watcher's changes against the committed history.

    `copies` maps each member read to its copy of the history, every change up
    to `last_revision` on the keys watched; they must agree, and the first is
    the judge. `operations` (and `revisions`, `deleted`: see `check_writes`)
    are the clients' history, cross-checked against it. ok is False on any
    violation, None if some watcher ended early (see WatcherLog.error) and
    nothing is wrong, True otherwise. Raises ValueError on a malformed history.
    """
    if not copies:
        raise ValueError("no copy of the committed history to check against")
    for history in copies.values():
        _validate(history, last_revision)
    history = next(iter(copies.values()))
    disagreement = _disagreement(copies)
    verdicts = [_check_watcher(w, history, last_revision) for w in watchers]
    problems = check_writes(history, operations, revisions=revisions, deleted=deleted)
    oks = [v.ok for v in verdicts]
    ok: bool | None = True
    if disagreement or problems or False in oks:
        ok = False
    elif None in oks:
        ok = None
    return WatchResult(
        ok=ok,
        watchers=verdicts,
        checked=sum(v.checked for v in verdicts),
        reconnects=sum(w.reconnects for w in watchers),
        last_revision=last_revision,
        members=list(copies),
        disagreement=disagreement,
        write_problems=problems,
    )


# ---- records on disk ------------------------------------------------------------------


@dataclass
class WatchRecord:
    """Everything `check_watches` judges but the clients' history: what a run
    saves beside its history.jsonl, so a failure can be checked again."""

    copies: dict[str, list[Change]]
    last_revision: int
    watchers: list[WatcherLog]
    revisions: dict[int, int] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)

    def check(self, operations: Iterable[Operation] = ()) -> WatchResult:
        return check_watches(
            self.copies,
            self.last_revision,
            self.watchers,
            operations,
            revisions=self.revisions,
            deleted=self.deleted,
        )


def save_record(record: WatchRecord, path: str | Path) -> None:
    """Write a record as one JSON object (see `load_record`)."""
    data = {
        "last_revision": record.last_revision,
        "committed": {n: [c.to_list() for c in h] for n, h in record.copies.items()},
        "watchers": [w.to_dict() for w in record.watchers],
        "revisions": {str(k): v for k, v in sorted(record.revisions.items())},
        "deleted": sorted(record.deleted),
    }
    Path(path).write_text(json.dumps(data), encoding="utf-8")


def load_record(path: str | Path) -> WatchRecord:
    """Read a record `save_record` wrote; ValueError if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return WatchRecord(
            copies={str(n): [Change.from_list(c) for c in h] for n, h in data["committed"].items()},
            last_revision=int(data["last_revision"]),
            watchers=[WatcherLog.from_dict(w) for w in data["watchers"]],
            revisions={int(k): int(v) for k, v in data.get("revisions", {}).items()},
            deleted={int(i) for i in data.get("deleted", [])},
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a watch record ({type(exc).__name__}: {exc})") from None
