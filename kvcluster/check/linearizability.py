"""Linearizability checking of key/value histories (Wing & Gong's search, as improved by Lowe).

The store is a map of independent registers, and linearizability is compositional
(Herlihy & Wing's locality): the history is linearizable iff each key's
sub-history is. So each key is checked on its own, which keeps the search small.

Per key, the search is the one of Lowe ("Testing for linearizability", 2017), also
used by Porcupine and Knossos: the call and return events, sorted by time, form a
doubly linked list; depth-first, the first call whose operation the register model
accepts is linearized and "lifted" out of the list (with its return); reaching a
return means that operation was not linearized in time, so the last choice is
undone ("unlifted") and the next call tried. A cache of (set of linearized
operations as an int bitset, register value) cuts every configuration reached
before. On top of that, three reductions specific to registers (see `_search`)
keep many concurrent writers on one key from making the search exponential, as
long as each put writes a value of its own, which is what test clients should do.

On a violation the key's history is shrunk, only ever by removals that cannot
make a linearizable history non-linearizable, to a small subset that still fails;
`Result.explain()` prints it with the furthest point the search reached.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .history import HistoryError, Operation

__all__ = ["CounterExample", "KeyResult", "Result", "check"]

_INF = math.inf
_WRITE, _READ, _CAS = 0, 1, 2
_KIND = {"put": _WRITE, "delete": _WRITE, "get": _READ, "cas": _CAS}
_CHECK_EVERY = 4096  # search steps between two looks at the clock


@dataclass(frozen=True)
class CounterExample:
    """Operations on one key that cannot be put in any order consistent with real time.

    `operations` is a subset of the key's history that is already not linearizable
    on its own: only reads, and writes whose value no remaining read observes, were
    removed, and neither kind of removal can turn a linearizable history into one
    that is not. So the violation is in these operations. `linearized` is the
    longest linearization of them the search found, leaving the register holding
    `state`; `stuck` is the operation that then had to take effect before its
    return and could not, with every operation still `pending` at that point.
    """

    key: str
    operations: tuple[Operation, ...]
    total: int
    minimal: bool
    linearized: tuple[Operation, ...]
    state: str | None
    stuck: Operation
    pending: tuple[Operation, ...]


@dataclass(frozen=True)
class KeyResult:
    """The verdict on one key: ok is None when the budget ran out first."""

    key: str
    ok: bool | None
    operations: int
    steps: int
    counterexample: CounterExample | None = None


@dataclass
class Result:
    """The verdict on a history. `ok` is True, False (a violation), or None (undecided)."""

    ok: bool | None
    reason: str
    keys: dict[str, KeyResult] = field(default_factory=dict)
    operations: int = 0
    steps: int = 0
    elapsed: float = 0.0
    start: float = 0.0

    def __bool__(self) -> bool:
        # Only a proof of linearizability is truthy: `assert check(h)` must not pass undecided.
        return self.ok is True

    @property
    def failed_keys(self) -> list[str]:
        return [k for k, r in self.keys.items() if r.ok is False]

    @property
    def counterexample(self) -> CounterExample | None:
        """The counter-example of the first key found not linearizable, if any."""
        for r in self.keys.values():
            if r.counterexample is not None:
                return r.counterexample
        return None

    def explain(self) -> str:
        """A human-readable verdict; on a violation, the operations that cannot be ordered."""
        nkeys = len(self.keys)
        if self.ok:
            return f"linearizable: {self.operations} operations on {nkeys} keys"
        if self.ok is None:
            undecided = [k for k, r in self.keys.items() if r.ok is None]
            return (
                f"undecided: {self.reason} after {self.steps} search steps; "
                f"{nkeys - len(undecided)} of {nkeys} keys linearizable, "
                f"not decided: {_key_list(undecided)}"
            )
        failed = self.failed_keys
        lines = [f"NOT linearizable: {len(failed)} of {nkeys} keys ({_key_list(failed)})"]
        ce = self.counterexample
        if ce is not None:
            lines.append("")
            lines.extend(_explain_counterexample(ce, self.start))
        return "\n".join(lines)


def _key_list(keys: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _fmt_value(v: str | None) -> str:
    return "(absent)" if v is None else repr(v)


def _describe(op: Operation) -> str:
    if op.op == "get":
        return f"get -> {_fmt_value(op.value)}"
    if op.op == "put":
        return f"put {op.value!r}"
    if op.op == "delete":
        return "delete"
    return f"cas {_fmt_value(op.expected)} -> {op.value!r}"


def _fmt_op(op: Operation, start: float) -> str:
    ret = "unknown" if op.status == "unknown" or op.ret is None else f"{op.ret - start:.6f}"
    return (
        f"#{op.id:<6} client {op.client!s:<8} {_describe(op):<28} "
        f"called {op.call - start:.6f}  returned {ret}"
    )


def _explain_counterexample(ce: CounterExample, start: float) -> list[str]:
    left_out = ce.total - len(ce.operations)
    lines = [f"key {ce.key!r}: {len(ce.operations)} operations that cannot be ordered"]
    if left_out:
        lines[0] += (
            f" (the other {left_out} on this key are left out: adding them back cannot"
            f" make these orderable{'' if ce.minimal else '; shrinking ran out of budget'})"
        )
    lines[0] += "; times in seconds from the start of the history:"
    lines += ["  " + _fmt_op(op, start) for op in ce.operations]
    if ce.linearized:
        lines.append("the search got furthest with these taking effect, in this order:")
        lines += ["  " + _fmt_op(op, start) for op in ce.linearized]
        lines.append(f"leaving the register {_fmt_value(ce.state)};")
    else:
        lines.append("the search got stuck at once: the register starts absent;")
    deadline = "" if ce.stuck.ret is None else f" by {ce.stuck.ret - start:.6f}"
    lines.append(
        f"then #{ce.stuck.id} ({_describe(ce.stuck)}) must take effect{deadline},"
        " but none of the operations pending there can:"
    )
    for op in ce.pending:
        if _applies(op, ce.state):
            why = "could take effect, but no order of the rest works after it"
        elif op.op == "get":
            why = f"reads {_fmt_value(op.value)}, the register holds {_fmt_value(ce.state)}"
        else:
            why = f"expects {_fmt_value(op.expected)}, the register holds {_fmt_value(ce.state)}"
        lines.append(f"  #{op.id} ({_describe(op)}): {why}")
    hint = _hint(ce)
    if hint:
        lines.append(f"in short: {hint}")
    return lines


def _applies(op: Operation, state: str | None) -> bool:
    if op.op == "get":
        return op.value == state
    if op.op == "cas":
        return op.expected == state
    return True


def _ret(op: Operation) -> float:
    return _INF if op.status != "ok" or op.ret is None else op.ret


def _hint(ce: CounterExample) -> str | None:
    """Name the classic anomaly behind the violation, when it is one of them."""
    reads = [op for op in ce.operations if op.op in ("get", "cas") and op is not ce.stuck]
    for g in [ce.stuck, *reads]:
        hint = _anomaly(g, ce.operations)
        if hint:
            return hint
    return None


def _anomaly(g: Operation, ops: Sequence[Operation]) -> str | None:
    """A one-line reason why read (or cas) `g` cannot be ordered, for common cases."""
    if g.op not in ("get", "cas") or g.status != "ok":
        return None
    v = g.value if g.op == "get" else g.expected
    writers = [w for w in ops if w.op != "get" and w.value == v]
    if v is not None and not writers:
        return f"#{g.id} reads {v!r}, which no operation that may have taken effect writes"
    if writers and all(w.call > _ret(g) for w in writers):
        names = ", ".join(f"#{w.id}" for w in writers)
        return f"#{g.id} reads {_fmt_value(v)}, written only by {names}, called after it returned"
    last_write = max((_ret(w) for w in writers), default=-_INF)  # absent: initially
    what = _fmt_value(v) if writers or v is not None else "the initial absent value"
    for x in ops:
        if x.op != "get" and x.value != v and last_write < x.call and _ret(x) < g.call:
            return (
                f"#{g.id} reads {what}, but #{x.id} ({_describe(x)}) overwrote it"
                f" and completed before #{g.id} was called (a stale read, or a lost write)"
            )
    for r in ops:
        if r.op != "get" or r.value == v or _ret(r) >= g.call:
            continue
        newer = [w for w in ops if w.op != "get" and w.value == r.value]
        if newer and all(last_write < w.call for w in newer):
            return (
                f"#{r.id} already read {_fmt_value(r.value)}, written after {what}, and returned"
                f" before #{g.id} was called: reads went back in time"
            )
    return None


# ---- the search ------------------------------------------------------------------------


class _Budget:
    """Search steps and wall time left for the whole check (shared across keys)."""

    def __init__(self, max_steps: int | None, timeout: float | None) -> None:
        self.steps_left = max_steps if max_steps is not None else 1 << 62
        self.deadline = time.monotonic() + timeout if timeout is not None else _INF
        self.used = 0

    def spend(self, steps: int) -> None:
        self.steps_left -= steps
        self.used += steps


@dataclass
class _Outcome:
    ok: bool | None
    steps: int
    # The furthest point reached (tracked runs only): linearization order, register
    # value code, the op whose return stopped the search, and the ops pending there.
    order: list[int] = field(default_factory=list)
    state: str | None = None
    stuck: int = -1
    pending: list[int] = field(default_factory=list)
    # The return time of the op the deepest stop was at (every run): a shrinking hint.
    stuck_time: float = _INF


def _search(
    ops: Sequence[Operation], budget: _Budget, track: bool = False, reduce: bool = True
) -> _Outcome:
    """Is this one key's (prepared) history linearizable? The WGL/Lowe search.

    Three reductions keep it from trying every order of concurrent operations; each
    only skips configurations from which no linearization could be completed:
    - a read of the current value is taken at once, with no alternative tried;
    - a write whose value nobody reads ("blind") can only be followed by another
      put/delete (or nothing). So it is linearized just before the next put/delete,
      together with every other blind write pending then, and tried alone only when
      its return is reached;
    - while the register holds a value that one write alone wrote, all reads of that
      value must come before anything changes it.
    Without them (`reduce=False`) the search is plain, which makes the furthest
    point it reaches a more telling counter-example.
    """
    n = len(ops)
    codes: dict[str | None, int] = {None: 0}
    kind = [_KIND[op.op] for op in ops]
    arg = [codes.setdefault(op.value, len(codes)) for op in ops]
    exp = [codes.setdefault(op.expected, len(codes)) for op in ops]
    must = [op.status == "ok" for op in ops]
    deadline = [op.ret if op.status == "ok" and op.ret is not None else _INF for op in ops]
    _bound_unknown_writes(kind, arg, exp, must, deadline, ops)
    # The register model, as two arrays: the value an op needs to find (-1: any) and
    # the value it leaves (-1: unchanged). put/delete: any -> value; get: value -> same;
    # cas: expected -> value.
    need = [-1 if k == _WRITE else arg[i] if k == _READ else exp[i] for i, k in enumerate(kind)]
    leave = [-1 if k == _READ else arg[i] for i, k in enumerate(kind)]
    observed = {v for v in need if v != -1}
    blind = [reduce and k == _WRITE and arg[i] not in observed for i, k in enumerate(kind)]
    any_blind = any(blind)
    writers = [0] * len(codes)
    for v in leave:
        if v != -1:
            writers[v] += 1
    unique = [reduce and c == 1 for c in writers]
    unique[0] = False  # "absent" is also the initial value
    unread = [0] * len(codes)  # reads of each value not linearized yet
    for i, v in enumerate(need):
        if must[i] and v != -1:
            unread[v] += 1
    bit = [1 << i for i in range(n)]
    values = {c: v for v, c in codes.items()}
    counted = [m and not b for m, b in zip(must, blind, strict=True)]
    remaining = sum(counted)  # ops that must be linearized (blind ones can go last)
    if remaining == 0:
        return _Outcome(True, 0)

    # Events sorted by time; at equal times calls come first, so operations that merely
    # touch count as concurrent: a coarse clock must never cause a false alarm.
    events = sorted(
        [(op.call, 0, i) for i, op in enumerate(ops)] + [(deadline[i], 1, i) for i in range(n)]
    )
    size = 2 * n
    head = size  # sentinel entry
    is_call = [k == 0 for _, k, _ in events]
    opi = [i for _, _, i in events]
    ret_pos = [0] * n
    for pos, (_, k, i) in enumerate(events):
        if k:
            ret_pos[i] = pos
    call_pos = [0] * n
    for pos, (_, k, i) in enumerate(events):
        if not k:
            call_pos[i] = pos
    match = [ret_pos[i] if is_call[pos] else call_pos[i] for pos, i in enumerate(opi)]
    nxt = [*range(1, size), -1, 0]
    prv = [head, *range(size - 1), -1]

    lin = 0  # bitset of the linearized ops
    state = 0  # value code of the register
    cache: set[tuple[int, int]] = set()  # configurations entered (and, once left, dead)
    # One frame per choice: (call entry lifted, state before, forced, blind writes absorbed)
    stack: list[tuple[int, int, bool, list[int]]] = []
    none: list[int] = []
    steps = 0
    next_check = min(_CHECK_EVERY, budget.steps_left)
    best_depth = -1
    out = _Outcome(False, 0)
    fresh = reduce  # at a configuration not scanned yet
    e = nxt[head]
    while True:
        steps += 1
        if steps >= next_check:
            if steps >= budget.steps_left or time.monotonic() > budget.deadline:
                budget.spend(steps)
                return _Outcome(None, steps)
            next_check = min(steps + _CHECK_EVERY, budget.steps_left)
        dead = False
        if fresh:
            # A pending read of the current value can always take effect first: it changes
            # nothing wherever it is, so moving it to the front of any linearization from
            # here keeps that valid. Take it and try nothing else: if that leads nowhere,
            # nothing does. (Not so for a write that happens to rewrite the current value:
            # later on, it may change the register.)
            fresh = False
            e = nxt[head]
            while is_call[e]:
                i = opi[e]
                if need[i] == state and (leave[i] == -1 or leave[i] == state):
                    break
                e = nxt[e]
            if not is_call[e]:
                e = nxt[head]
                continue
            config = (lin | bit[i], state)
            if config in cache:
                dead = True
            else:
                cache.add(config)
                stack.append((e, state, True, none))
                lin = config[0]
                if must[i]:
                    unread[state] -= 1
                    remaining -= 1
                    if remaining == 0:
                        budget.spend(steps)
                        return _Outcome(True, steps)
                _lift(e, match[e], nxt, prv)
                fresh = reduce
                e = nxt[head]
                continue
        elif is_call[e]:
            i = opi[e]
            v = need[i]
            if blind[i] or (v != -1 and v != state):
                e = nxt[e]
                continue
            new_state = state if leave[i] == -1 else leave[i]
            if new_state != state and unique[state] and unread[state] > (must[i] and v == state):
                e = nxt[e]  # the only write of this value still has reads to serve
                continue
            new_lin = lin | bit[i]
            absorbed = none
            if any_blind and kind[i] == _WRITE:
                absorbed = []
                c = nxt[head]
                while is_call[c]:
                    if blind[opi[c]]:
                        absorbed.append(c)
                        new_lin |= bit[opi[c]]
                    c = nxt[c]
            config = (new_lin, new_state)
            if config in cache:
                e = nxt[e]
                continue
            cache.add(config)
            stack.append((e, state, False, absorbed))
            lin = new_lin
            state = new_state
            if must[i] and v != -1:
                unread[v] -= 1
            if counted[i]:
                remaining -= 1
                if remaining == 0:
                    budget.spend(steps)
                    return _Outcome(True, steps)
            _lift(e, match[e], nxt, prv)
            for c in absorbed:
                _lift(c, match[c], nxt, prv)
            fresh = reduce
            e = nxt[head]
            continue
        elif blind[opi[e]]:
            # The return of a blind write: it can take effect alone now, at the latest
            # (the next op will have to be a write). Nothing else is left to try here.
            i = opi[e]
            config = (lin | bit[i], leave[i])
            if config not in cache and not (unique[state] and unread[state]):
                cache.add(config)
                c = match[e]
                stack.append((c, state, True, none))
                lin = config[0]
                state = leave[i]
                _lift(c, e, nxt, prv)
                fresh = reduce
                e = nxt[head]
                continue
        if not dead and len(stack) > best_depth:
            # A return: its op should have taken effect by now, and none could. Note how
            # far this got, for the counter-example.
            best_depth = len(stack)
            out.stuck_time = deadline[opi[e]]
            if track:
                out.order = [opi[c] for f in stack for c in (*f[3], f[0])]
                out.state = values[state]
                out.stuck = opi[e]
                pend = []
                c = nxt[head]
                while c != e:
                    if is_call[c]:
                        pend.append(opi[c])
                    c = nxt[c]
                out.pending = pend
        # Backtrack: undo the last choice and try the next entry after it; undo a
        # forced choice and the configuration it was made in is dead too.
        while True:
            if not stack:
                budget.spend(steps)
                out.steps = steps
                return out
            e, state, forced, absorbed = stack.pop()
            i = opi[e]
            lin ^= bit[i]
            for c in reversed(absorbed):
                _unlift(c, match[c], nxt, prv)
                lin ^= bit[opi[c]]
            _unlift(e, match[e], nxt, prv)
            if counted[i]:
                remaining += 1
            if must[i] and need[i] != -1:
                unread[need[i]] += 1
            if not forced:
                break
        e = nxt[e]


def _lift(e: int, r: int, nxt: list[int], prv: list[int]) -> None:
    """Unlink call entry `e` and its return entry `r` from the list (they keep their links)."""
    p, q = prv[e], nxt[e]
    nxt[p] = q
    prv[q] = p  # q != -1: the return follows the call
    p, q = prv[r], nxt[r]
    nxt[p] = q
    if q != -1:
        prv[q] = p


def _unlift(e: int, r: int, nxt: list[int], prv: list[int]) -> None:
    """Relink what `_lift` unlinked: the return first, then the call (the reverse order)."""
    p, q = prv[r], nxt[r]
    nxt[p] = r
    if q != -1:
        prv[q] = r
    p, q = prv[e], nxt[e]
    nxt[p] = e
    prv[q] = e


def _bound_unknown_writes(
    kind: list[int],
    arg: list[int],
    exp: list[int],
    must: list[bool],
    deadline: list[float],
    ops: Sequence[Operation],
) -> None:
    """Pin down unknown writes that a completed read proves happened.

    If an unknown write is the only one of its (non-absent) value and an ok read
    saw that value, it did take effect, before that read returned: so it is, exactly,
    an operation that must be linearized by the earliest such return. Otherwise the
    search would keep trying it at every step until that read (its return is at
    infinity), which costs a factor of the number of such writes in flight.
    """
    writers: dict[int, int] = {}
    for i, k in enumerate(kind):
        if k != _READ:
            writers[arg[i]] = writers.get(arg[i], 0) + 1
    first_read: dict[int, float] = {}
    for i, k in enumerate(kind):
        if must[i] and k != _WRITE:
            v = arg[i] if k == _READ else exp[i]
            first_read[v] = min(first_read.get(v, _INF), deadline[i])
    for i, k in enumerate(kind):
        v = arg[i]
        if must[i] or k == _READ or not v or writers[v] > 1 or v not in first_read:
            continue
        if first_read[v] >= ops[i].call:  # else a read from the future: the search fails
            must[i] = True
            deadline[i] = first_read[v]


# ---- preparing, shrinking, and the per-key driver ---------------------------------------


def _observed(ops: Iterable[Operation]) -> set[str | None]:
    """The register values some operation reads: what a get saw, what a cas expected."""
    seen: set[str | None] = set()
    for op in ops:
        if op.op == "get":
            seen.add(op.value)
        elif op.op == "cas":
            seen.add(op.expected)
    return seen


def _relaxed(ops: Sequence[Operation], keep: Sequence[int], remove: set[int]) -> list[int]:
    """`keep` minus `remove`, but only by removals that cannot create a violation.

    Dropping a read only drops a constraint. Dropping a write is safe when no read
    left observes the value it wrote: deleting it from any linearization of the
    larger history leaves every remaining read seeing what it saw. Writes whose
    value is still observed stay (and a cas that stays observes again: fixpoint).
    """
    writes = {i for i in remove if ops[i].op != "get"}
    while True:
        left = [i for i in keep if i not in remove]
        obs = _observed(ops[i] for i in left)
        stay = {i for i in writes if ops[i].value in obs}
        if not stay:
            return left
        remove = remove - stay
        writes -= stay


def _prepare(ops: Sequence[Operation]) -> list[Operation]:
    """Drop what carries no information, so the search does not branch on it.

    A failed op never took effect; an unknown get observed nothing; an unknown
    write nobody observed may as well never have happened (see `_relaxed`, and it
    was allowed not to happen).
    """
    kept = [op for op in ops if op.status != "fail" and not (op.op == "get" and op.status != "ok")]
    kept.sort(key=lambda op: (op.call, op.id))
    unknown = {i for i, op in enumerate(kept) if op.status == "unknown"}
    return [kept[i] for i in _relaxed(kept, range(len(kept)), unknown)]


def _fails(ops: Sequence[Operation], keep: Sequence[int], budget: _Budget) -> bool | None:
    return _invert(_search([ops[i] for i in keep], budget).ok)


def _invert(ok: bool | None) -> bool | None:
    return None if ok is None else not ok


def _shrink(ops: Sequence[Operation], hint_time: float, budget: _Budget) -> tuple[list[int], bool]:
    """A small failing subset of a failing key history (delta debugging by relaxations).

    Returns the indices kept and whether shrinking finished (the subset is then
    1-minimal: no single allowed removal keeps it failing).
    """
    cur = list(range(len(ops)))
    # Most violations are local: first try cutting everything called after the
    # furthest point the search reached.
    cand = _relaxed(ops, cur, {i for i in cur if ops[i].call > hint_time})
    if len(cand) < len(cur):
        verdict = _fails(ops, cand, budget)
        if verdict is None:
            return cur, False
        if verdict:
            cur = cand
    granularity = 2
    while len(cur) >= 2:
        chunk = math.ceil(len(cur) / granularity)
        progressed = False
        for s in range(0, len(cur), chunk):
            cand = _relaxed(ops, cur, set(cur[s : s + chunk]))
            if len(cand) == len(cur):
                continue
            verdict = _fails(ops, cand, budget)
            if verdict is None:
                return cur, False
            if verdict:
                cur = cand
                granularity = max(granularity - 1, 2)
                progressed = True
                break
        if not progressed:
            if chunk == 1:
                break
            granularity = min(granularity * 2, len(cur))
    return cur, True


def _counterexample(
    key: str, ops: list[Operation], first: _Outcome, budget: _Budget, shrink_budget: _Budget
) -> CounterExample | None:
    keep, minimal = list(range(len(ops))), False
    if shrink_budget.steps_left > 0:
        keep, minimal = _shrink(ops, first.stuck_time, shrink_budget)
    sub = [ops[i] for i in keep]
    # Replay the search on the (failing) subset, remembering where it got furthest;
    # plainly if that is quick, as the plain search gets further before it is stuck.
    time_left = max(0.0, budget.deadline - time.monotonic())
    out = _Outcome(None, 0)
    if len(sub) <= 200:
        out = _search(sub, _Budget(100_000, time_left), track=True, reduce=False)
    if out.ok is None:
        out = _search(sub, _Budget(None, time_left), track=True)
    if out.ok is not False:
        return None
    return CounterExample(
        key=key,
        operations=tuple(sub),
        total=len(ops),
        minimal=minimal,
        linearized=tuple(sub[i] for i in out.order),
        state=out.state,
        stuck=sub[out.stuck],
        pending=tuple(sub[i] for i in out.pending),
    )


def check(
    operations: Iterable[Operation],
    *,
    timeout: float | None = 60.0,
    max_steps: int | None = None,
    shrink_steps: int = 2_000_000,
) -> Result:
    """Is this history of a key/value store linearizable?

    `timeout` (seconds) and `max_steps` (search steps, deterministic) bound the
    whole check: a key not decided within them is undecided, and so is the result
    unless some key already failed. `shrink_steps` bounds the extra search spent
    shrinking counter-examples (0: report a failing key's whole history).
    Raises HistoryError on a malformed history.
    """
    t0 = time.perf_counter()
    ops = list(operations)
    ids: set[int] = set()
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        op.validate()
        if op.id in ids:
            raise HistoryError(f"duplicate operation id {op.id}")
        ids.add(op.id)
        by_key.setdefault(op.key, []).append(op)

    budget = _Budget(max_steps, timeout)
    shrink_budget = _Budget(shrink_steps, timeout)
    keys: dict[str, KeyResult] = {}
    for key in sorted(by_key):
        prepared = _prepare(by_key[key])
        if budget.steps_left <= 0 or time.monotonic() > budget.deadline:
            keys[key] = KeyResult(key, None, len(prepared), 0)
            continue
        out = _search(prepared, budget)
        ce = None
        if out.ok is False:
            shrink_budget.deadline = budget.deadline
            ce = _counterexample(key, prepared, out, budget, shrink_budget)
        keys[key] = KeyResult(key, out.ok, len(prepared), out.steps, ce)

    verdicts = [r.ok for r in keys.values()]
    if False in verdicts:
        ok: bool | None = False
        failed = [k for k, r in keys.items() if r.ok is False]
        reason = f"key {failed[0]!r} is not linearizable"
    elif None in verdicts:
        ok, reason = None, "budget exhausted"
    else:
        ok, reason = True, "linearizable"
    return Result(
        ok=ok,
        reason=reason,
        keys=keys,
        operations=len(ops),
        steps=budget.used,
        elapsed=time.perf_counter() - t0,
        start=min((op.call for op in ops), default=0.0),
    )
