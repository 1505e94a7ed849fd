"""Watches in the node layer (kvcluster/node/watches.py), sans-IO, on real stores.

Each guarantee of the module docstring has a test here: revision order, one
revision per message, nothing missed or repeated (against a twin store that is
never compacted, under random writes, compactions and clients that read
slowly), compaction, and a client that moves to another node that is behind.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from mvcc_helpers import Store, compact, delete_range, put, txn

from kvcluster.kv import KVStore
from kvcluster.node.watches import (
    CANCELED,
    COMPACTED,
    CREATED,
    DUPLICATE_ID,
    EVENTS,
    EVENTS_BUDGET,
    MAX_WATCHERS_PER_STREAM,
    NOTIFY,
    PROGRESS,
    REFUSED,
    SCAN_BUDGET,
    WatchHub,
    WatchMessage,
    WatchSpec,
    WatchStream,
)


def drain(stream: WatchStream, kv: KVStore, now: float = 0.0) -> list[WatchMessage]:
    """Everything the stream has to say now (scan steps included)."""
    out = []
    while (m := stream.next_message(kv, now)) is not None or stream.pending(kv):
        if m is not None:
            out.append(m)
    return out


def events_of(messages: list[WatchMessage], watch_id: int = 0) -> list[dict[str, Any]]:
    return [e for m in messages if m.kind == EVENTS and m.watch_id == watch_id for e in m.events]


def brief(events: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    return [(e["type"], e["kv"]["key"], e["kv"]["value"], e["kv"]["mod_revision"]) for e in events]


def test_live_events_in_order_with_prev_kv_after_created() -> None:
    s = Store()
    s(put("a", "0"))
    hub = WatchHub()
    ws = hub.open()
    assert ws.create(WatchSpec("a", prev_kv=True), s.kv, 0.0) == 0
    [created] = drain(ws, s.kv)
    assert (created.kind, created.watch_id, created.revision) == (CREATED, 0, 1)
    assert drain(ws, s.kv) == []  # nothing new
    s(put("a", "1"))
    s(put("b", "x"))  # another key: not for this watcher
    s(delete_range("a"))
    [message] = drain(ws, s.kv)
    assert message.kind == EVENTS and message.revision == 4
    assert brief(list(message.events)) == [("PUT", "a", "1", 2), ("DELETE", "a", "", 4)]
    assert message.events[0]["prev_kv"]["value"] == "0"
    assert message.events[1]["prev_kv"]["value"] == "1"
    s(put("a", "2"))
    [again] = drain(ws, s.kv)
    assert brief(list(again.events)) == [("PUT", "a", "2", 5)]
    assert again.events[0]["prev_kv"] is None  # created anew: nothing before


def test_prev_kv_is_left_out_unless_asked_and_filters_drop_puts_or_deletes() -> None:
    s = Store()
    hub = WatchHub()
    ws = hub.open()
    plain = ws.create(WatchSpec("k", range_end="l"), s.kv, 0)
    no_put = ws.create(WatchSpec("k", range_end="l", no_put=True, prev_kv=True), s.kv, 0)
    no_delete = ws.create(WatchSpec("k", range_end="l", no_delete=True), s.kv, 0)
    s(put("k1", "a"))
    s(put("k1", "b"))
    s(delete_range("k", "l"))
    messages = drain(ws, s.kv)
    assert [m.kind for m in messages[:3]] == [CREATED] * 3
    assert brief(events_of(messages, plain)) == [
        ("PUT", "k1", "a", 1),
        ("PUT", "k1", "b", 2),
        ("DELETE", "k1", "", 3),
    ]
    assert all(e["prev_kv"] is None for e in events_of(messages, plain))
    [deleted] = events_of(messages, no_put)
    assert deleted["type"] == "DELETE" and deleted["prev_kv"]["value"] == "b"
    assert brief(events_of(messages, no_delete)) == [("PUT", "k1", "a", 1), ("PUT", "k1", "b", 2)]
    # A watcher whose events are all filtered out is sent nothing, and moves on.
    s(put("k2", "c"))
    messages = drain(ws, s.kv)
    assert {m.watch_id for m in messages} == {plain, no_delete}


def test_all_events_of_a_revision_come_in_one_message_and_backlogs_split_between_them() -> None:
    s = Store()
    hub = WatchHub()
    ws = hub.open()
    ws.create(WatchSpec("p/", range_end="p0", prev_kv=True), s.kv, 0)
    drain(ws, s.kv)
    big = "v" * 1000
    n = 3 * EVENTS_BUDGET // 1000  # keys enough for three messages' worth
    for i in range(n):
        s(put(f"p/{i:05d}", big))
    s(txn(success=[{"request_put": {"key": "p/a", "value": "1"}},
                   {"request_put": {"key": "p/b", "value": "2"}}]))  # fmt: skip
    s(delete_range("p/", "p0"))  # n + 2 keys at one revision, more than a message's budget
    messages = drain(ws, s.kv)
    assert len(messages) > 3
    seen: list[int] = []
    covered = 0
    for m in messages:
        assert m.kind == EVENTS
        revisions = [e["kv"]["mod_revision"] for e in m.events]
        assert revisions == sorted(revisions) and revisions[0] > covered
        assert revisions[-1] <= m.revision  # the header covers what it carries
        covered = m.revision
        seen += sorted(set(revisions))
    assert len(seen) == len(set(seen))  # no revision in two messages
    assert covered == s.kv.revision
    everything = [e for m in messages for e in m.events]
    assert brief(everything) == brief(list(s.kv.changes_since(1, "p/", "p0")))
    # The delete's n + 2 events (with their previous values: more than a message's
    # budget) are all in one message.
    [deletes] = [m for m in messages if any(e["type"] == "DELETE" for e in m.events)]
    gone = [e for e in deletes.events if e["type"] == "DELETE"]
    assert len(gone) == n + 2 and {e["kv"]["mod_revision"] for e in gone} == {s.kv.revision}
    assert sum(len(e["prev_kv"]["value"]) for e in gone) > EVENTS_BUDGET
    [txn_message] = [m for m in messages if any(e["kv"]["key"] == "p/a" for e in m.events)]
    assert {e["kv"]["key"] for e in txn_message.events} >= {"p/a", "p/b"}


def test_from_a_past_revision_and_from_a_compacted_one() -> None:
    s = Store()
    for i in range(6):
        s(put("h", str(i)))
    s(compact(3))
    hub = WatchHub()
    ws = hub.open()
    at_compaction = ws.create(WatchSpec("h", start_revision=3), s.kv, 0)
    messages = drain(ws, s.kv)
    assert [m.kind for m in messages] == [CREATED, EVENTS]
    assert [e["kv"]["value"] for e in messages[1].events] == ["2", "3", "4", "5"]
    assert messages[1].watch_id == at_compaction
    before = ws.create(WatchSpec("h", start_revision=2), s.kv, 0)
    created, compacted = drain(ws, s.kv)
    assert (created.kind, compacted.kind) == (CREATED, COMPACTED)
    assert compacted.watch_id == before and compacted.compact_revision == 3
    assert ws.watch_ids() == [at_compaction]  # the compacted one is gone
    assert hub.watchers == 1


def test_a_slow_watcher_overtaken_by_compaction_is_told_and_ends() -> None:
    s = Store()
    hub = WatchHub()
    ws = hub.open()
    ws.create(WatchSpec("x"), s.kv, 0)
    drain(ws, s.kv)
    for i in range(10):
        s(put("x", str(i)))
    s(compact(8))  # the watcher, which has read nothing since, is at 1
    [compacted] = drain(ws, s.kv)
    assert compacted.kind == COMPACTED and compacted.compact_revision == 8
    assert len(ws) == 0 and hub.watchers == 0


def test_a_future_start_revision_waits_for_it() -> None:
    s = Store()
    s(put("f", "0"))
    hub = WatchHub()
    ws = hub.open()
    ws.create(WatchSpec("f", start_revision=4), s.kv, 0)
    assert [m.kind for m in drain(ws, s.kv)] == [CREATED]
    s(put("f", "2"))
    s(put("f", "3"))
    assert drain(ws, s.kv) == []
    s(put("f", "4"))
    [m] = drain(ws, s.kv)
    assert brief(list(m.events)) == [("PUT", "f", "4", 4)]


def test_watch_ids_cancel_and_progress() -> None:
    s = Store()
    s(put("w", "0"))
    hub = WatchHub()
    ws = hub.open()
    assert ws.create(WatchSpec("w"), s.kv, 0) == 0
    assert ws.create(WatchSpec("w", watch_id=2), s.kv, 0) == 2
    assert ws.create(WatchSpec("w"), s.kv, 0) == 1
    assert ws.create(WatchSpec("w"), s.kv, 0) == 3  # 2 is taken
    assert ws.create(WatchSpec("w", watch_id=2), s.kv, 0) == -1
    assert ws.create(WatchSpec("w", watch_id=-5), s.kv, 0) == -1
    assert ws.create(WatchSpec("w", start_revision=-1), s.kv, 0) == -1
    assert ws.cancel(2, s.kv) and not ws.cancel(2, s.kv) and not ws.cancel(77, s.kv)
    ws.progress(s.kv)
    messages = drain(ws, s.kv)
    assert [(m.kind, m.watch_id) for m in messages] == [
        (CREATED, 0),
        (CREATED, 2),
        (CREATED, 1),
        (CREATED, 3),
        (REFUSED, -1),
        (REFUSED, -1),
        (REFUSED, -1),
        (CANCELED, 2),
        (PROGRESS, -1),
    ]
    assert messages[4].reason == DUPLICATE_ID and "negative" in messages[5].reason
    assert messages[-1].revision == 1
    s(put("w", "1"))
    assert sorted(m.watch_id for m in drain(ws, s.kv)) == [0, 1, 3]  # not the canceled 2
    # Progress says how far *every* watcher has been sent: a behind one holds it back.
    s(put("w", "2"))
    ws.create(WatchSpec("w", start_revision=1), s.kv, 0)
    ws.progress(s.kv)
    created, progress = drain(ws, s.kv)[:2]
    assert created.kind == CREATED
    assert progress.kind == PROGRESS and progress.revision == 0
    ws.progress(s.kv)
    assert drain(ws, s.kv)[-1] == WatchMessage(PROGRESS, -1, 3)


def test_progress_notifications_come_after_an_interval_without_messages() -> None:
    s = Store()
    hub = WatchHub(progress_interval=10.0)
    ws = hub.open()
    quiet = ws.create(WatchSpec("q", progress_notify=True), s.kv, 0.0)
    ws.create(WatchSpec("q"), s.kv, 0.0)  # no notifications asked
    drain(ws, s.kv, 0.0)
    assert hub.next_deadline() == 10.0
    assert drain(ws, s.kv, 9.9) == []
    s(put("other", "1"))
    assert drain(ws, s.kv, 10.0) == [WatchMessage(NOTIFY, quiet, 1)]
    assert hub.next_deadline() == 20.0
    s(put("q", "1"))
    assert [m.kind for m in drain(ws, s.kv, 15.0)] == [EVENTS, EVENTS]  # resets its clock
    assert drain(ws, s.kv, 20.0) == []
    assert drain(ws, s.kv, 25.0) == [WatchMessage(NOTIFY, quiet, 2)]


def test_limits_on_watchers() -> None:
    s = Store()
    hub = WatchHub()
    ws = hub.open()
    for _ in range(MAX_WATCHERS_PER_STREAM):
        assert ws.create(WatchSpec("l"), s.kv, 0) >= 0
    assert ws.create(WatchSpec("l"), s.kv, 0) == -1
    assert "another stream" in drain(ws, s.kv)[-1].reason
    assert hub.watchers == MAX_WATCHERS_PER_STREAM
    hub.close(ws)
    assert hub.watchers == 0 and not hub.streams
    assert ws.create(WatchSpec("l"), s.kv, 0) == -1 and ws.next_message(s.kv, 0) is None


def test_a_new_store_from_a_snapshot_goes_on_where_the_old_one_was() -> None:
    s = Store()
    hub = WatchHub()
    ws = hub.open()
    ws.create(WatchSpec("s", range_end="t", prev_kv=True), s.kv, 0)
    s(put("s1", "a"))
    got = events_of(drain(ws, s.kv))
    s(put("s1", "b"))
    s(put("s2", "c"))
    installed = s.copy()  # a follower installs a snapshot: a new KVStore
    installed(put("s1", "d"))
    got += events_of(drain(ws, installed.kv))
    assert brief(got) == [
        ("PUT", "s1", "a", 1),
        ("PUT", "s1", "b", 2),
        ("PUT", "s2", "c", 3),
        ("PUT", "s1", "d", 4),
    ]
    assert got[-1]["prev_kv"]["value"] == "b"


def test_a_watcher_far_behind_reads_the_history_in_bounded_steps() -> None:
    """A watch on a key that changed once, 300 revisions back among others:
    each call reads at most about scan_budget events, returns None while there
    is more to read (pending stays True), and the one event arrives, once."""
    s = Store()
    s(put("x", "wanted"))
    for i in range(300):
        s(put(f"other/{i % 7}", str(i)))
    hub = WatchHub(scan_budget=50)
    ws = hub.open()
    ws.create(WatchSpec("x", start_revision=1), s.kv, 0.0)
    assert ws.next_message(s.kv, 0.0).kind == CREATED  # type: ignore[union-attr]
    first = ws.next_message(s.kv, 0.0)  # the revision-1 event is in the first step
    assert first is not None and brief(list(first.events)) == [("PUT", "x", "wanted", 1)]
    assert first.revision == 50  # the step covered revisions 1..50, no further
    steps = 0
    while ws.pending(s.kv):
        assert ws.next_message(s.kv, 0.0) is None  # nothing more for it: only steps
        steps += 1
    assert steps == 6  # 250 revisions left, 50 a step
    s(put("x", "again"))
    assert brief(events_of(drain(ws, s.kv))) == [("PUT", "x", "again", 302)]


# ---------------------------------------------------------------------- random histories


KEYS = ["a", "a/1", "a/2", "b", "b/1", "c"]
RANGES: list[tuple[str, str | None]] = [
    ("a", None),
    ("a/", "a0"),
    ("b", "c"),
    ("\x00", "\x00"),
    ("a/2", "\x00"),
    ("b/1", None),
]


def random_command(rng: random.Random, kv: KVStore) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.55:
        return put(rng.choice(KEYS), "v" * rng.randrange(0, 3000))
    if roll < 0.75:
        return delete_range(rng.choice(KEYS))
    if roll < 0.85:
        key, end = rng.choice(RANGES)
        return delete_range(key, end)
    if roll < 0.95:
        ops = [
            {"request_put": {"key": k, "value": str(rng.random())}}
            for k in rng.sample(KEYS, rng.randrange(1, 4))
        ]
        return txn(success=ops)
    if kv.revision > kv.compacted + 2:
        return compact(rng.randrange(kv.compacted + 1, kv.revision))
    return put("c", "x")


def expected_events(
    twin: KVStore, start: int, spec: WatchSpec, upto: int | None = None
) -> list[tuple[str, str, int, str | None, str]]:
    """What a watcher must be sent, from a store that is never compacted."""
    out = []
    for e in twin.changes_since(start, spec.key, spec.range_end):
        if upto is not None and e["kv"]["mod_revision"] > upto:
            break
        if (spec.no_put and e["type"] == "PUT") or (spec.no_delete and e["type"] == "DELETE"):
            continue
        prev = e["prev_kv"]["value"] if spec.prev_kv and e["prev_kv"] else None
        out.append((e["type"], e["kv"]["key"], e["kv"]["mod_revision"], prev, e["kv"]["value"]))
    return out


def shown(events: list[dict[str, Any]]) -> list[tuple[str, str, int, str | None, str]]:
    return [
        (
            e["type"],
            e["kv"]["key"],
            e["kv"]["mod_revision"],
            e["prev_kv"]["value"] if e["prev_kv"] else None,
            e["kv"]["value"],
        )
        for e in events
    ]


@pytest.mark.parametrize("seed", range(40))
def test_random_histories_nothing_missed_or_repeated(seed: int) -> None:
    """Random writes and compactions; watchers made, canceled and read at random,
    each read a little at a time (a slow client): each one's events are exactly
    the twin store's from its start, in order, a revision never split."""
    rng = random.Random(seed)
    s = Store()
    twin = Store()  # the same log, never compacted
    hub = WatchHub(
        events_budget=rng.choice([1, 3000, 20_000, EVENTS_BUDGET]),
        scan_budget=rng.choice([1, 5, 40, SCAN_BUDGET]),
    )
    streams = [hub.open() for _ in range(3)]
    # (stream, watch id) -> [spec, start, delivered events, how it ended]
    watchers: dict[tuple[int, int], list[Any]] = {}
    last_revision: dict[tuple[int, int], int] = {}

    def take(i: int, budget: int) -> None:
        stream = streams[i]
        for _ in range(budget):
            m = stream.next_message(s.kv, 0.0)
            if m is None:
                if stream.pending(s.kv):
                    continue  # a scan step: the next call goes on
                return
            if m.kind in (CREATED, REFUSED, PROGRESS, CANCELED):
                continue
            state = watchers[(i, m.watch_id)]
            assert state[3] is None, "a message after the end"
            if m.kind == COMPACTED:
                state[3] = ("compacted", m.compact_revision)
                continue
            assert m.kind == EVENTS and m.events
            revisions = [e["kv"]["mod_revision"] for e in m.events]
            assert revisions == sorted(revisions)
            assert revisions[0] > last_revision.get((i, m.watch_id), 0)  # never a revision twice
            assert revisions[-1] <= m.revision <= s.kv.revision
            last_revision[(i, m.watch_id)] = m.revision
            state[2] += list(m.events)

    for _step in range(300):
        roll = rng.random()
        if roll < 0.5:
            command = random_command(rng, s.kv)
            s(command)
            if command.get("op") != "compact":  # (compaction changes no revision)
                twin(command)
        elif roll < 0.6:
            i = rng.randrange(3)
            key, end = rng.choice(RANGES)
            start = rng.choice([0, 0, max(1, s.kv.revision - rng.randrange(0, 20))])
            spec = WatchSpec(
                key,
                end,
                start_revision=start,
                prev_kv=rng.random() < 0.5,
                no_put=rng.random() < 0.15,
                no_delete=rng.random() < 0.15,
            )
            watch_id = streams[i].create(spec, s.kv, 0.0)
            if watch_id >= 0:
                watchers[(i, watch_id)] = [spec, start or s.kv.revision + 1, [], None]
        elif roll < 0.65 and watchers:
            (i, watch_id), state = rng.choice(sorted(watchers.items(), key=lambda kv: kv[0]))
            if state[3] is None and streams[i].cancel(watch_id, s.kv):
                state[3] = ("canceled", s.kv.revision)
        else:
            take(rng.randrange(3), rng.randrange(1, 4))
    for i in range(3):
        take(i, 10_000)
    assert twin.kv.revision == s.kv.revision and twin.kv.compacted == 0
    checked = 0
    for (i, watch_id), (spec, start, delivered, end) in watchers.items():
        got = shown(delivered)
        want = expected_events(twin.kv, start, spec)
        if end is None:
            assert got == want  # complete: everything since its start
        elif end[0] == "canceled":
            assert got == want[: len(got)]  # a prefix: nothing skipped before the cancel
        else:
            # Told when its cursor fell behind the compaction (as etcd does, even if
            # none of its own events were lost), and nothing skipped before that.
            compact_revision = end[1]
            assert got == want[: len(got)]
            cursor = last_revision.get((i, watch_id), start - 1) + 1
            assert cursor < compact_revision
        checked += 1
    assert checked > 5


def test_a_client_that_moves_to_a_node_behind_sees_no_gap() -> None:
    rng = random.Random(7)
    log = []
    ahead, behind = Store(), Store()
    for _ in range(400):
        command = random_command(rng, ahead.kv)
        if command.get("op") == "compact":
            continue
        log.append(command)
        ahead(command)
    spec = WatchSpec("a", "c", start_revision=1, prev_kv=True)
    hub_a = WatchHub()
    first = hub_a.open()
    first.create(spec, ahead.kv, 0)
    got: list[dict[str, Any]] = []
    last_seen = 0
    for _ in range(2):  # read some, then the node (or the connection) goes
        m = first.next_message(ahead.kv, 0)
        assert m is not None
        if m.kind == EVENTS:
            got += m.events
            last_seen = m.events[-1]["kv"]["mod_revision"]
    hub_a.close(first)
    assert 0 < last_seen < ahead.kv.revision
    # The other node has applied less than the client has seen.
    for command in log[: len(log) // 4]:
        behind(command)
    assert behind.kv.revision < last_seen
    hub_b = WatchHub()
    second = hub_b.open()
    second.create(WatchSpec("a", "c", start_revision=last_seen + 1, prev_kv=True), behind.kv, 0)
    for command in log[len(log) // 4 :]:
        behind(command)
        got += events_of(drain(second, behind.kv))
    assert shown(got) == expected_events(ahead.kv, 1, spec)
