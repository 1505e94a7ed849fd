"""Tests of the watch checker (kvcluster.check.watch): real-shaped watchers pass, and
every kind of broken delivery (gap, duplicate, order, split revision, wrong value,
lost write) is caught and explained."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from kvcluster.check import Operation, save
from kvcluster.check.cli import main
from kvcluster.check.watch import (
    Change,
    WatcherLog,
    WatchRecord,
    WatchResult,
    check_watches,
    check_writes,
    in_range,
    load_record,
    prefix_end,
    save_record,
)


def history(seed: int = 1, revisions: int = 200) -> list[Change]:
    """A committed history shaped like a nemesis run's: puts and deletes on k0..k4 (and
    on keys outside the watched prefix), some revisions being txns of several keys."""
    rng = random.Random(seed)
    out: list[Change] = []
    present: set[str] = set()
    for r in range(1, revisions + 1):
        n = 1 if rng.random() < 0.8 else rng.randint(2, 3)
        for key in rng.sample(["k0", "k1", "k2", "k3", "k4", "a", "z9"], n):
            if key in present and rng.random() < 0.2:
                out.append(Change(r, "DELETE", key))
                present.discard(key)
            else:
                out.append(Change(r, "PUT", key, f"v{r}-{key}"))
                present.add(key)
    return out


def watcher(
    committed: list[Change],
    *,
    key: str = "k",
    range_end: str | None = "l",
    start: int = 1,
    end: int | None = None,
    reconnects: int = 0,
    batch_size: int = 4,
) -> WatcherLog:
    """A correct watcher: its slice of the history, in responses of whole revisions."""
    last = committed[-1].revision if end is None else end
    changes = [
        c for c in committed if start <= c.revision <= last and in_range(c.key, key, range_end)
    ]
    batches, batch, count = [], 0, 0
    for i, c in enumerate(changes):
        if i and c.revision != changes[i - 1].revision:
            count += 1
            if count % batch_size == 0:
                batch += 1
        batches.append(batch)
    return WatcherLog(
        "w1",
        key,
        range_end,
        start,
        last,
        changes,
        batches,
        reconnects,
        ["n0", "n2"][: 1 + (reconnects > 0)],
    )


def last(committed: list[Change]) -> int:
    return committed[-1].revision


def verdict(committed: list[Change], *logs: WatcherLog) -> WatchResult:
    return check_watches({"n0": committed, "n1": list(committed)}, last(committed), logs)


def rejected(committed: list[Change], log: WatcherLog, *words: str) -> str:
    result = verdict(committed, log)
    assert result.ok is False, result.explain()
    text = result.explain()
    assert "watcher w1" in text
    for w in words:
        assert w in text, text
    return text


# ---- ranges --------------------------------------------------------------------------


def test_prefix_end_and_ranges() -> None:
    assert prefix_end("k") == "l"
    assert prefix_end("a/b") == "a/c"
    assert prefix_end("") == "\0"
    assert in_range("k1", "k", "l") and not in_range("l", "k", "l") and not in_range("j", "k", "l")
    assert in_range("k1", "k1", None) and not in_range("k10", "k1", None)
    assert in_range("zzz", "k", "\0") and not in_range("a", "k", "\0")


# ---- accepted ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_correct_watchers_pass(seed: int) -> None:
    committed = history(seed)
    rng = random.Random(seed)
    logs = [
        watcher(committed),  # the whole prefix, from revision 1
        watcher(committed, start=rng.randint(2, 150), reconnects=2),  # joined later
        watcher(committed, key="k3", range_end=None, batch_size=1),  # one key
        watcher(committed, key="a", range_end="\0"),  # every key from "a" on
        watcher(committed, start=50, end=120),  # stopped early (asked to)
    ]
    logs = [replace(log, name=f"w{i}") for i, log in enumerate(logs)]
    result = check_watches({"n0": committed, "n3": list(committed)}, last(committed), logs)
    assert result.ok is True, result.explain()
    assert result.checked == sum(len(log.changes) for log in logs) > 100
    assert result.reconnects == 2
    assert "ok; 5 watchers" in result.summary()
    assert "2 members agree" in result.summary() or "of 2 members agree" in result.summary()


def test_a_watcher_with_nothing_to_see_passes() -> None:
    committed = history()
    log = watcher(committed, key="nothing-here", range_end=None)
    assert log.changes == []
    assert verdict(committed, log).ok is True


def test_records_round_trip_through_json() -> None:
    committed = history()
    log = watcher(committed, start=20, reconnects=1)
    again = WatcherLog.from_dict(json.loads(json.dumps(log.to_dict())))
    assert again == log
    assert [Change.from_list(c.to_list()) for c in committed] == committed


# ---- rejected: each kind of broken delivery ------------------------------------------


def test_a_gap_is_caught() -> None:
    committed = history()
    log = watcher(committed, start=10)
    lost = log.changes[40]
    del log.changes[40], log.batches[40]
    text = rejected(committed, log, "a gap", str(lost), f"r{lost.revision}")
    assert text.count(">>") >= 4  # the spot marked in both the history and the delivery


def test_a_missing_tail_is_a_gap() -> None:
    committed = history()
    log = watcher(committed)
    lost = log.changes.pop()
    log.batches.pop()
    rejected(committed, log, "a gap", str(lost), "never sent")


def test_a_missing_first_event_is_a_gap() -> None:
    committed = history()
    log = watcher(committed, start=30)
    lost = log.changes.pop(0)
    log.batches.pop(0)
    rejected(committed, log, "a gap", str(lost))


def test_a_duplicate_is_caught() -> None:
    committed = history()
    log = watcher(committed)
    # A reconnect from the last revision seen instead of the one after it.
    again = log.changes[30]
    log.changes.insert(31, again)
    log.batches.insert(31, log.batches[30] + 1)
    rejected(committed, log, "a duplicate", str(again))


def test_a_replayed_stretch_is_a_duplicate() -> None:
    committed = history()
    log = watcher(committed)
    log.changes[60:60] = log.changes[50:55]
    log.batches[60:60] = log.batches[50:55]
    rejected(committed, log, "a duplicate", str(log.changes[50]))


def test_out_of_order_is_caught() -> None:
    committed = history()
    log = watcher(committed)
    first = next(
        i
        for i in range(20, len(log.changes))
        if log.changes[i].revision != log.changes[i + 1].revision
    )
    log.changes[first], log.changes[first + 1] = log.changes[first + 1], log.changes[first]
    rejected(committed, log, f"r{log.changes[first].revision}")


def test_events_of_one_revision_out_of_order_are_caught() -> None:
    committed = history()
    log = watcher(committed)
    i = next(
        i
        for i in range(len(log.changes) - 1)
        if log.changes[i].revision == log.changes[i + 1].revision
    )
    log.changes[i], log.changes[i + 1] = log.changes[i + 1], log.changes[i]
    rejected(committed, log, f"revision {log.changes[i].revision} out of order")


def test_a_revision_split_over_two_responses_is_caught() -> None:
    committed = history()
    log = watcher(committed)
    i = next(
        i
        for i in range(len(log.changes) - 1)
        if log.changes[i].revision == log.changes[i + 1].revision
    )
    log.batches[i + 1 :] = [b + 1 for b in log.batches[i + 1 :]]
    rejected(committed, log, f"revision {log.changes[i].revision} split over two responses")


def test_a_wrong_value_is_caught() -> None:
    committed = history()
    log = watcher(committed)
    c = next(c for c in log.changes[25:] if c.type == "PUT")
    i = log.changes.index(c)
    log.changes[i] = replace(c, value="something else")
    rejected(committed, log, "a wrong event", f"r{c.revision}", repr("something else"), str(c))


def test_a_put_seen_as_a_delete_is_caught() -> None:
    committed = history()
    log = watcher(committed)
    c = next(c for c in log.changes[25:] if c.type == "PUT")
    i = log.changes.index(c)
    log.changes[i] = Change(c.revision, "DELETE", c.key)
    rejected(committed, log, "a wrong event", f"r{c.revision}")


def test_an_event_outside_the_watched_range_is_caught() -> None:
    committed = history()
    log = watcher(committed)
    outside = next(c for c in committed if c.key == "a" and c.revision > log.changes[10].revision)
    i = next(i for i, c in enumerate(log.changes) if c.revision > outside.revision)
    log.changes.insert(i, outside)
    log.batches.insert(i, log.batches[i])
    rejected(committed, log, "not in the committed history", str(outside))


def test_events_before_the_start_or_after_the_end_are_caught() -> None:
    committed = history()
    early = watcher(committed, start=40)
    before = [c for c in watcher(committed).changes if c.revision < 40][-1]
    early.changes.insert(0, before)
    early.batches.insert(0, 0)
    rejected(committed, early, "before its start revision 40")
    stopped = watcher(committed, end=100)
    after = next(c for c in watcher(committed).changes if c.revision > 100)
    stopped.changes.append(after)
    stopped.batches.append(stopped.batches[-1] + 1)
    rejected(committed, stopped, "up to which it was sent everything")


def test_an_event_after_the_committed_history_is_caught() -> None:
    committed = history()
    log = watcher(committed)
    phantom = Change(last(committed) + 1, "PUT", "k1", "never written")
    log.changes.append(phantom)
    log.batches.append(log.batches[-1] + 1)
    log.end_revision = phantom.revision
    rejected(committed, log, "after the last committed revision")


@pytest.mark.parametrize("how", ["drop", "duplicate", "swap", "value"])
@pytest.mark.parametrize("seed", range(8))
def test_any_single_mutation_of_a_delivery_fails(how: str, seed: int) -> None:
    rng = random.Random(seed)
    committed = history(seed)
    log = watcher(committed, start=rng.randint(1, 30))
    n = len(log.changes)
    i = rng.randrange(n)
    if how == "drop":
        del log.changes[i], log.batches[i]
    elif how == "duplicate":
        log.changes.insert(i, log.changes[i])
        log.batches.insert(i, log.batches[i])
    elif how == "swap":
        j = min(i + 1, n - 1) if i < n - 1 else i - 1
        assert log.changes[i] != log.changes[j]
        log.changes[i], log.changes[j] = log.changes[j], log.changes[i]
    else:
        log.changes[i] = replace(log.changes[i], type="PUT", value="mutant")
    assert verdict(committed, log).ok is False


# ---- the committed history itself ------------------------------------------------------


def test_members_that_disagree_fail_the_check() -> None:
    committed = history()
    theirs = list(committed)
    theirs[70] = replace(theirs[70], value="diverged", type="PUT")
    result = check_watches({"n0": committed, "n4": theirs}, last(committed), [watcher(committed)])
    assert result.ok is False
    assert "members disagree" in result.explain() and "n4" in result.explain()
    assert str(theirs[70]) in result.explain()
    shorter = check_watches({"n0": committed, "n1": committed[:-3]}, last(committed), [])
    assert shorter.ok is False and "ends before it" in shorter.explain()


def test_a_watcher_that_ended_early_is_not_a_pass() -> None:
    committed = history()
    log = watcher(committed, end=80)
    log.error = "compacted: revision 81 is gone (compact revision 90)"
    result = verdict(committed, log)
    assert result.ok is None
    assert "ended early" in result.explain() and "compact" in result.explain()
    log.changes.pop(3)
    log.batches.pop(3)
    assert verdict(committed, log).ok is False  # what it got is still checked


def test_a_malformed_history_is_refused() -> None:
    with pytest.raises(ValueError, match="goes back"):
        check_watches({"n0": [Change(2, "PUT", "k", "a"), Change(1, "PUT", "k", "b")]}, 2, [])
    with pytest.raises(ValueError, match="after the history's last revision"):
        check_watches({"n0": [Change(3, "PUT", "k", "a")]}, 2, [])
    with pytest.raises(ValueError, match="no copy"):
        check_watches({}, 2, [])


# ---- acknowledged writes against the history ---------------------------------------------


def op(
    i: int, kind: str, key: str, value: str | None, status: str = "ok", expected: str | None = None
) -> Operation:
    return Operation(i, "c", kind, key, value, float(i), float(i) + 0.5, status, expected)  # type: ignore[arg-type]


def test_acknowledged_writes_in_the_history_pass() -> None:
    committed = [
        Change(1, "PUT", "k1", "a"),
        Change(2, "PUT", "k1", "b"),
        Change(3, "DELETE", "k1"),
        Change(4, "PUT", "k2", "c"),
    ]
    ops = [
        op(1, "put", "k1", "a"),
        op(2, "cas", "k1", "b", expected="a"),
        op(3, "delete", "k1", None),
        op(4, "put", "k2", "c", "unknown"),
        op(5, "put", "k2", "d", "fail"),
        op(6, "get", "k2", "c"),
        op(7, "delete", "k9", None),  # found nothing: no event, and not in `deleted`
    ]
    assert check_writes(committed, ops, revisions={1: 1, 3: 3}, deleted={3}) == []
    assert check_writes(committed, ops, deleted={3}) == []


def test_a_lost_write_is_caught() -> None:
    committed = [Change(1, "PUT", "k1", "a"), Change(2, "PUT", "k2", "b")]
    lost = op(3, "cas", "k1", "c", expected="a")
    problems = check_writes(committed, [op(1, "put", "k1", "a"), lost])
    assert len(problems) == 1 and "lost write: op #3" in problems[0]
    result = check_watches({"n0": committed}, 2, [], [lost])
    assert result.ok is False and "lost write" in result.explain()


def test_a_write_at_another_revision_than_acknowledged_is_caught() -> None:
    committed = [Change(1, "PUT", "k1", "a"), Change(2, "PUT", "k1", "b")]
    problems = check_writes(committed, [op(1, "put", "k1", "a")], revisions={1: 2})
    assert len(problems) == 1 and "at revision 2" in problems[0] and "r1" in problems[0]


def test_a_write_reported_failed_that_took_effect_is_caught() -> None:
    committed = [Change(1, "PUT", "k1", "a")]
    problems = check_writes(committed, [op(1, "cas", "k1", "a", "fail", expected=None)])
    assert len(problems) == 1 and "reported as not done" in problems[0]


def test_a_lost_delete_is_caught() -> None:
    committed = [
        Change(1, "PUT", "k1", "a"),
        Change(2, "DELETE", "k1"),
        Change(3, "PUT", "k1", "b"),
    ]
    deletes = [op(4, "delete", "k1", None), op(5, "delete", "k1", None)]
    problems = check_writes(committed, deletes, deleted={4, 5})
    assert len(problems) == 1 and "2 deletes of 'k1'" in problems[0]
    assert check_writes(committed, deletes, deleted={4}) == []
    problems = check_writes(committed, deletes[:1], revisions={4: 3}, deleted={4})
    assert len(problems) == 1 and "at revision 3" in problems[0]


# ---- records on disk and `kvcluster check --watches` -----------------------------------


def test_a_saved_record_checks_again_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    committed = [
        Change(1, "PUT", "k1", "a"),
        Change(2, "PUT", "k1", "b"),
        Change(2, "PUT", "k2", "c"),
        Change(3, "DELETE", "k1"),
    ]
    ops = [
        op(1, "put", "k1", "a"),
        op(2, "cas", "k1", "b", expected="a"),
        op(3, "get", "k1", "b"),
        op(4, "delete", "k1", None),
    ]
    save(ops, tmp_path / "history.jsonl")
    good = WatchRecord({"n0": committed, "n1": committed}, 3, [watcher(committed)], {1: 1}, {4})
    save_record(good, tmp_path / "watches.json")
    again = load_record(tmp_path / "watches.json")
    assert again == good
    args = [str(tmp_path / "history.jsonl"), "--watches", str(tmp_path / "watches.json")]
    assert main(args) == 0
    assert "watch: ok; 1 watchers, 4 events checked" in capsys.readouterr().out

    bad = watcher(committed)
    del bad.changes[1], bad.batches[1]  # r2 split: one of its two events missing
    save_record(replace(good, watchers=[bad]), tmp_path / "watches.json")
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "result:     linearizable" in out and "a gap: r2 PUT 'k1' = 'b'" in out

    (tmp_path / "watches.json").write_text('{"committed": 1}')
    assert main(args) == 2
    assert "not a watch record" in capsys.readouterr().err
