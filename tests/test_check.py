"""Tests of history recording and the linearizability checker (kvcluster.check)."""

from __future__ import annotations

import functools
import itertools
import json
import random
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from kvcluster.check import (
    HistoryError,
    HistoryRecorder,
    Operation,
    Result,
    check,
    load,
    random_history,
    save,
)
from kvcluster.check.cli import main

_ids = itertools.count(1_000_000)  # clear of random_history ids


def op(
    kind: str,
    value: str | None,
    call: float,
    ret: float | None,
    status: str = "ok",
    *,
    key: str = "x",
    client: str | int = "c",
    expected: str | None = None,
) -> Operation:
    """One operation; unique ids so explanations can be matched against them."""
    return Operation(next(_ids), client, kind, key, value, call, ret, status, expected)  # type: ignore[arg-type]


def put(v: str, call: float, ret: float | None, status: str = "ok", **kw: object) -> Operation:
    return op("put", v, call, ret, status, **kw)  # type: ignore[arg-type]


def get(
    v: str | None, call: float, ret: float | None, status: str = "ok", **kw: object
) -> Operation:
    return op("get", v, call, ret, status, **kw)  # type: ignore[arg-type]


def delete(call: float, ret: float | None, status: str = "ok", **kw: object) -> Operation:
    return op("delete", None, call, ret, status, **kw)  # type: ignore[arg-type]


def rejected(history: list[Operation]) -> Result:
    result = check(history)
    assert result.ok is False, result.explain()
    assert not result
    return result


def accepted(history: list[Operation]) -> Result:
    result = check(history)
    assert result.ok is True, result.explain()
    return result


def culprits(result: Result) -> set[int]:
    ce = result.counterexample
    assert ce is not None
    return {o.id for o in ce.operations}


# ---- histories that must be rejected ----------------------------------------------------


def test_stale_read() -> None:
    a, b, r = put("a", 0, 1), put("b", 2, 3), get("a", 4, 5)
    result = rejected([a, b, r])
    assert culprits(result) == {a.id, b.id, r.id}
    text = result.explain()
    assert "'x'" in text and f"#{r.id}" in text and f"#{b.id}" in text
    assert "stale read" in text


def test_lost_write() -> None:
    # put b was acknowledged, yet later non-overlapping reads see the older value.
    a, b = put("a", 0, 1), put("b", 2, 3)
    r1, r2 = get("a", 4, 5, client="r"), get("a", 6, 7, client="r")
    result = rejected([a, b, r1, r2, get("a", 0.5, 1.5, client="q")])
    assert {a.id, b.id} <= culprits(result)
    assert len(culprits(result)) == 3  # one of the two stale reads suffices


def test_read_of_a_value_never_written() -> None:
    r = get("zz", 2, 3)
    result = rejected([put("a", 0, 1), r, put("b", 4, 5)])
    assert culprits(result) == {r.id}
    assert "no operation that may have taken effect writes" in result.explain()


def test_read_of_a_failed_write() -> None:
    r = get("b", 4, 5)
    result = rejected([put("a", 0, 1), put("b", 2, 3, "fail"), r])
    assert culprits(result) == {r.id}


def test_read_before_the_put_was_invoked() -> None:
    r, w = get("a", 0, 1), put("a", 2, 3)
    result = rejected([r, w])
    assert culprits(result) == {r.id, w.id}
    assert "called after it returned" in result.explain()


def test_read_from_the_future_of_an_unknown_put() -> None:
    r, w = get("a", 0, 1), put("a", 2, None, "unknown")
    assert culprits(rejected([r, w])) == {r.id, w.id}


def test_deleted_key_read_back() -> None:
    a, d, r = put("a", 0, 1), delete(2, 3), get("a", 4, 5)
    result = rejected([a, d, r])
    assert culprits(result) == {a.id, d.id, r.id}
    assert "delete" in result.explain()


def test_reads_go_backwards_with_a_concurrent_put() -> None:
    a = put("a", 0, 1)
    b = put("b", 2, 10)  # concurrent with both reads
    new, old = get("b", 3, 4, client="r"), get("a", 5, 6, client="r")
    result = rejected([a, b, new, old])
    assert culprits(result) == {a.id, b.id, new.id, old.id}
    assert "back in time" in result.explain()


def test_absent_read_after_an_acknowledged_put() -> None:
    rejected([put("a", 0, 1), get(None, 2, 3)])


def test_violation_on_one_key_among_many() -> None:
    history = random_history(600, clients=5, keys=6, seed=7)
    stale = put("s1", 100, 101, key="bad"), put("s2", 102, 103, key="bad")
    r = get("s1", 104, 105, key="bad")
    result = rejected([*history, *stale, r])
    assert result.failed_keys == ["bad"]
    assert sum(k.ok is True for k in result.keys.values()) == 6
    text = result.explain()
    assert "'bad'" in text and f"#{r.id}" in text
    assert "1 of 7 keys" in text


# ---- histories that must be accepted ----------------------------------------------------


@pytest.mark.parametrize("seen", ["a", "b"])
def test_concurrent_put_and_get_may_see_either_value(seen: str) -> None:
    accepted([put("a", 0, 1), put("b", 2, 5), get(seen, 3, 4)])


def test_concurrent_gets_may_disagree_while_a_put_is_in_flight() -> None:
    accepted([put("a", 0, 1), put("b", 2, 10), get("b", 3, 4), get("a", 3.5, 4.5, client="d")])


def test_operations_that_only_touch_are_concurrent() -> None:
    # With a coarse clock, a put returning at t and a get called at t may be either order.
    accepted([put("a", 0, 1), put("b", 1, 2), get("a", 2, 3)])


def test_unknown_put_takes_effect_later() -> None:
    b = put("b", 2, 2.5, "unknown")  # the client gave up at 2.5
    accepted([put("a", 0, 1), b, put("c", 3, 4), get("c", 5, 6), get("b", 7, 8)])


def test_unknown_put_never_takes_effect() -> None:
    accepted([put("a", 0, 1), put("b", 2, None, "unknown"), get("a", 10, 11), get("a", 12, 13)])


def test_unknown_put_cannot_take_effect_twice() -> None:
    history = [put("a", 0, 1), put("b", 2, None, "unknown"), put("c", 3, 4)]
    rejected([*history, get("b", 5, 6), get("c", 7, 8), get("b", 9, 10)])


def test_failed_put_whose_value_never_appears() -> None:
    accepted([put("a", 0, 1), put("b", 2, 3, "fail"), get("a", 4, 5)])


def test_unknown_and_failed_gets_carry_no_information() -> None:
    accepted([put("a", 0, 1), get("zz", 2, None, "unknown"), get("zz", 3, 4, "fail")])


def test_reads_of_absent_keys() -> None:
    accepted([get(None, 0, 1), get(None, 0, 1, key="y"), put("a", 2, 3), delete(4, 5)])
    accepted([put("a", 0, 1), delete(2, 3), get(None, 4, 5), get(None, 6, 7, key="never")])


def test_many_keys_interleaved() -> None:
    history = []
    for i in range(20):
        key = f"k{i % 4}"
        t = i * 0.5  # each key's operations overlap other keys' operations
        history += [put(f"v{i}", t, t + 3, key=key), get(f"v{i}", t + 3.5, t + 4, key=key)]
    result = accepted(history)
    assert set(result.keys) == {"k0", "k1", "k2", "k3"}


def test_empty_history() -> None:
    result = accepted([])
    assert result.explain().startswith("linearizable: 0 operations")


def test_cas() -> None:
    a = put("a", 0, 1)
    accepted([a, op("cas", "b", 2, 3, expected="a"), get("b", 4, 5)])
    accepted([op("cas", "a", 0, 1, expected=None), get("a", 2, 3)])
    rejected([a, op("cas", "b", 2, 3, expected="zz")])
    rejected([a, op("cas", "b", 2, 3, expected="a"), op("cas", "c", 4, 5, expected="a")])
    # An unknown cas may have swapped.
    accepted([a, op("cas", "b", 2, None, "unknown", expected="a"), get("b", 4, 5)])


# ---- randomized: generated linearizable histories, and mutations of them ---------------


def _mutate_one_read(history: list[Operation], rng: random.Random) -> list[Operation]:
    """Make one read return a value that a put invoked only after the read returned wrote."""
    gets = [o for o in history if o.op == "get" and o.status == "ok"]
    rng.shuffle(gets)
    for g in gets:
        assert g.ret is not None
        later = [o for o in history if o.key == g.key and o.op == "put" and o.call > g.ret]
        if later:
            bad = replace(g, value=rng.choice(later).value)
            return [bad if o is g else o for o in history]
    raise AssertionError("no read to mutate")


@pytest.mark.parametrize("seed", range(25))
def test_random_linearizable_histories_pass_and_mutants_fail(seed: int) -> None:
    rng = random.Random(seed)
    history = random_history(
        rng.randrange(50, 400),
        clients=rng.randrange(2, 9),
        keys=rng.randrange(1, 5),
        seed=seed,
        unknown_rate=0.05,
        fail_rate=0.05,
        skew=rng.choice([0.0, 1.0]),
    )
    accepted(history)
    mutant = _mutate_one_read(history, rng)
    result = rejected(mutant)
    changed = next(m for m, o in zip(mutant, history, strict=True) if m != o)
    assert result.failed_keys == [changed.key]
    assert changed.id in culprits(result)


def _reference(history: list[Operation]) -> bool:
    """An independent, naive definition: some order of the ok ops (plus any of the unknown
    ones) that respects real time and that the register model accepts. Memoized on the
    ops left and the register value, which keeps small histories quick."""
    ops = [o for o in history if o.status != "fail" and not (o.op == "get" and o.status != "ok")]

    def ret(o: Operation) -> float:
        return float("inf") if o.status != "ok" or o.ret is None else o.ret

    @functools.cache
    def search(left: frozenset[int], state: str | None) -> bool:
        if all(ops[i].status != "ok" for i in left):
            return True  # the unknown ones left never take effect
        for i in left:
            o = ops[i]
            if any(ret(ops[j]) < o.call for j in left):
                continue  # something left must take effect before o
            if o.op == "get":
                ok, new = o.value == state, state
            elif o.op == "cas":
                ok, new = o.expected == state, o.value
            else:
                ok, new = True, o.value
            if ok and search(left - {i}, new):
                return True
        return False

    return search(frozenset(range(len(ops))), None)


def _small_random_history(rng: random.Random, n: int, values: str) -> list[Operation]:
    history = []
    for _ in range(n):
        call = rng.randrange(12)
        ret = call + rng.randrange(5)
        status = rng.choice(["ok", "ok", "ok", "unknown", "fail"])
        kind = rng.choice(["put", "put", "get", "get", "delete", "cas"])
        value = rng.choice([*values, None]) if kind == "get" else rng.choice(values)
        expected = rng.choice([*values[:2], None]) if kind == "cas" else None
        history.append(
            op(kind, None if kind == "delete" else value, call, ret, status, expected=expected)
        )
    return history


@pytest.mark.parametrize("values", ["ab", "abcdefgh"])
def test_agrees_with_a_naive_checker_on_small_random_histories(values: str) -> None:
    rng = random.Random(values)
    verdicts = []
    for _ in range(300):
        history = _small_random_history(rng, rng.randrange(1, 9), values)
        expected_ok = _reference(history)
        verdicts.append(expected_ok)
        result = check(history)
        assert result.ok is expected_ok, history
        if result.ok is False:  # the counter-example is itself a violation
            assert result.counterexample is not None
            assert not _reference(list(result.counterexample.operations))
            assert result.explain()
    assert 30 < sum(verdicts) < 270  # both kinds of history were exercised


def test_many_concurrent_writers_on_one_key_stay_cheap() -> None:
    # Plain WGL search is exponential in the writes in flight; the reductions are not.
    history = random_history(3000, clients=40, keys=1, seed=5, put_ratio=0.6)
    result = check(history, max_steps=200_000)
    assert result.ok is True, result.explain()


# ---- budget ------------------------------------------------------------------------------


def test_budget_exhausted_is_undecided_not_a_hang() -> None:
    result = check(random_history(2000, seed=1), max_steps=50)
    assert result.ok is None
    assert result.reason == "budget exhausted"
    assert not result
    assert result.explain().startswith("undecided: budget exhausted")


def test_timeout_zero_is_undecided() -> None:
    assert check(random_history(200, seed=2), timeout=0.0).ok is None


def test_unshrunk_counterexample() -> None:
    history = [put("a", 0, 1), put("b", 2, 3), get("a", 4, 5), get("b", 6, 7)]
    result = check(history, shrink_steps=0)
    ce = result.counterexample
    assert ce is not None and not ce.minimal and len(ce.operations) == 4


# ---- recording, files ---------------------------------------------------------------------


def test_recorder_with_injected_clock() -> None:
    now = [0.0]
    rec = HistoryRecorder(clock=lambda: now[0])
    t1 = rec.invoke("c1", "put", "x", "a")
    now[0] = 1.0
    t2 = rec.invoke("c2", "get", "x")
    now[0] = 2.0
    rec.complete(t1, "ok")
    rec.complete(t2, "ok", "a")
    t3 = rec.invoke("c1", "delete", "x")
    ops = rec.operations()
    assert [(o.op, o.value, o.call, o.ret, o.status) for o in ops] == [
        ("put", "a", 0.0, 2.0, "ok"),
        ("get", "a", 1.0, 2.0, "ok"),
        ("delete", None, 2.0, None, "unknown"),  # not completed yet
    ]
    with pytest.raises(ValueError, match="already completed"):
        rec.complete(t1, "ok")
    with pytest.raises(KeyError):
        rec.complete(99, "ok")
    with pytest.raises(ValueError):
        rec.complete(t3, "maybe")  # type: ignore[arg-type]
    assert check(ops).ok is True


def test_recorder_is_thread_safe_and_records_a_linearizable_store() -> None:
    rec = HistoryRecorder()
    store: dict[str, str] = {}
    lock = threading.Lock()

    def client(name: str) -> None:
        rng = random.Random(name)
        for i in range(150):
            key = rng.choice("abc")
            if rng.random() < 0.5:
                token = rec.invoke(name, "put", key, f"{name}-{i}")
                with lock:
                    store[key] = f"{name}-{i}"
                rec.complete(token, "ok")
            else:
                token = rec.invoke(name, "get", key)
                with lock:
                    seen = store.get(key)
                rec.complete(token, "ok", seen)

    threads = [threading.Thread(target=client, args=(f"t{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = rec.operations()
    assert len(ops) == len(rec) == 900 and len({o.id for o in ops}) == 900
    assert check(ops).ok is True


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    history = [*random_history(300, seed=3), op("cas", "n", 1, 2, expected=None, client=7)]
    path = tmp_path / "h.jsonl"
    save(history, path)
    assert load(path) == history
    rec = HistoryRecorder()
    rec.complete(rec.invoke(1, "put", "k", "v"), "ok")
    rec.save(path)
    assert load(path) == rec.operations()
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"id", "client", "op", "key", "value", "call", "ret", "status"}


_GOOD = {
    "id": 0,
    "client": "c",
    "op": "put",
    "key": "k",
    "value": "v",
    "call": 0,
    "ret": 1,
    "status": "ok",
}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", r"h\.jsonl:2: "),
        ('{"id": 1}', "missing field"),
        (json.dumps({**_GOOD, "id": 9, "op": "inc"}), "op must be"),
        (json.dumps({**_GOOD, "id": 9, "ret": None}), "needs a ret"),
        (json.dumps({**_GOOD, "id": 9, "call": 2}), "before its call"),
        (json.dumps({**_GOOD, "id": 9, "value": None}), "needs a value"),
        (json.dumps({**_GOOD, "id": 9, "status": "maybe"}), "status must be"),
        (json.dumps(_GOOD), "duplicate"),
    ],
)
def test_load_rejects_malformed_lines(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(f"{json.dumps(_GOOD)}\n{line}\n\n")
    with pytest.raises(HistoryError, match=message):
        load(path)


def test_check_rejects_malformed_operations() -> None:
    with pytest.raises(HistoryError):
        check([put("a", 0, None)])  # ok without a return time
    with pytest.raises(HistoryError, match="duplicate"):
        check([Operation(1, "c", "get", "k", None, 0, 1, "ok")] * 2)


# ---- command line -------------------------------------------------------------------------


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    save(random_history(500, seed=4, unknown_rate=0.05, fail_rate=0.05), good)
    assert main([str(good)]) == 0
    out = capsys.readouterr().out
    assert "500 on" in out and "linearizable" in out and " ok, " in out and "unknown" in out

    bad = tmp_path / "bad.jsonl"
    stale = put("a", 0, 1), put("b", 2, 3), get("a", 4, 5)
    save(stale, bad)
    assert main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "NOT linearizable" in out and "'x'" in out and f"#{stale[2].id}" in out

    assert main([str(good), "--max-steps", "1"]) == 2
    assert "undecided" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--help"]) == 0
