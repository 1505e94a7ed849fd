"""Storage: the write-ahead log, snapshots, compaction, recovery and fsync policies.

Behavioural tests run against both MemoryStorage and DiskStorage (the node must
not be able to tell them apart); the file-level tests (torn tails, corruption,
identity, fsync counts) are about DiskStorage only.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from storage_backends import Backend

from kvcluster.raft import Entry, EntryKind, HardState
from kvcluster.storage import (
    FSYNC_POLICIES,
    CorruptLogError,
    DiskStorage,
    MemoryStorage,
    PersistedState,
    SnapshotMeta,
    SnapshotSource,
    Storage,
    StorageIdentityError,
)
from kvcluster.storage.wal import FRAME, encode_entry, encode_hard_state

MEMBERSHIP = {"n1": {"address": "http://127.0.0.1:1", "voter": True, "incarnation": ""}}


def entries(lo: int, hi: int, term: int = 1, value: Any = None) -> list[Entry]:
    """Entries lo..hi inclusive."""
    return [
        Entry(i, term, EntryKind.NORMAL, value or {"k": f"key{i}", "v": i})
        for i in range(lo, hi + 1)
    ]


def payload(index: int, **data: Any) -> list[bytes]:
    """A snapshot's payload lines (opaque to storage; the node writes FrozenKV.lines())."""
    return [b"applied %d" % index, *(f"{k}={v}".encode() for k, v in data.items())]


def snapshot(st: Storage, index: int, term: int = 1, **data: Any) -> bool:
    """Take a snapshot as the node does: write it (a worker thread's job), then adopt it."""
    meta = SnapshotMeta(index, term, MEMBERSHIP)
    return st.adopt_snapshot(st.write_snapshot(meta, payload(index, **data)))


def snapshot_of(st: PersistedState) -> tuple[SnapshotMeta, list[bytes]] | None:
    """The loaded snapshot's meta and payload lines, or None without one."""
    return None if st.source is None else (st.source.meta, list(st.source.payload()))


def snap(index: int, term: int = 1, **data: Any) -> tuple[SnapshotMeta, list[bytes]]:
    """What `snapshot_of` gives for `snapshot(st, index, term, **data)`."""
    return SnapshotMeta(index, term, MEMBERSHIP), payload(index, **data)


def same(a: PersistedState, b: PersistedState) -> bool:
    """Equal states, snapshot bytes included (memory and disk encode the same stream)."""

    def stream(st: PersistedState) -> bytes | None:
        return None if st.source is None else st.source.read(0, st.source.size)

    return (a.hard_state, a.entries, a.snapshot_index, a.snapshot_term) == (
        b.hard_state,
        b.entries,
        b.snapshot_index,
        b.snapshot_term,
    ) and stream(a) == stream(b)


def disk(path: Path, **options: Any) -> DiskStorage:
    return DiskStorage(path, name="n1", **options)


# ---------------------------------------------------------------- behaviour (both)


def test_records_round_trip(backend: Backend) -> None:
    log = [
        Entry(1, 1, EntryKind.NOOP, None),
        Entry(2, 1, EntryKind.CONFIG, MEMBERSHIP),
        Entry(3, 1, EntryKind.NORMAL, {"op": "put", "key": "ключ ✓ 🚀", "value": "日本語"}),
        Entry(4, 2, EntryKind.NORMAL, None),
        Entry(5, 2, EntryKind.NORMAL, 'a plain string with "quotes" and \\ and \n'),
        Entry(6, 2, EntryKind.NORMAL, [1, 2.5, True, None, {"nested": [{}]}]),
        Entry(7, 3, EntryKind.NORMAL, "lone surrogate \ud800 survives"),
        Entry(8, 3, EntryKind.NORMAL, {"big": "x" * 100_000}),
    ]
    st = backend.open()
    st.save(HardState(1, None), log[:2])
    st.save(HardState(3, "n2 ✓"), log[2:])
    st.save(None, [])
    assert st.load().entries == log
    st = backend.restart(st)
    got = st.load()
    assert got.hard_state == HardState(3, "n2 ✓")
    assert got.entries == log
    assert [e.kind for e in got.entries] == [e.kind for e in log]
    assert isinstance(got.entries[0].kind, EntryKind)
    assert got.source is None and got.snapshot_index == 0
    st.close()


def test_vote_none_and_empty_vote_differ(backend: Backend) -> None:
    st = backend.open()
    st.save(HardState(4, ""), [])
    st = backend.restart(st)
    assert st.load().hard_state == HardState(4, "")
    st.save(HardState(5, None), [])
    assert backend.restart(st).load().hard_state == HardState(5, None)


def test_overwrite_suffix(backend: Backend) -> None:
    st = backend.open()
    st.save(HardState(1, "n1"), entries(1, 5, term=1))
    st.save(HardState(2, "n2"), entries(3, 4, term=2))  # a new leader replaces 3..5
    assert [(e.index, e.term) for e in st.load().entries] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    st.save(None, entries(5, 6, term=2))
    st.save(None, entries(2, 2, term=3))  # cut back to 2
    st = backend.restart(st)
    got = st.load()
    assert [(e.index, e.term) for e in got.entries] == [(1, 1), (2, 3)]
    assert got.hard_state == HardState(2, "n2")


def test_gaps_are_refused(backend: Backend) -> None:
    st = backend.open()
    st.save(None, entries(1, 3))
    with pytest.raises(ValueError, match="start at 5"):
        st.save(None, entries(5, 6))
    with pytest.raises(ValueError, match="contiguous"):
        st.save(None, [Entry(4, 1), Entry(6, 1)])
    assert [e.index for e in backend.restart(st).load().entries] == [1, 2, 3]


def test_snapshot_drops_covered_entries(backend: Backend) -> None:
    st = backend.open()
    st.save(HardState(2, "n1"), entries(1, 40, term=1) + entries(41, 60, term=2))
    assert snapshot(st, 45, 2) is True
    got = st.load()
    assert (got.snapshot_index, got.snapshot_term) == (45, 2)
    assert snapshot_of(got) == snap(45, 2)
    assert [e.index for e in got.entries] == list(range(46, 61))
    st.save(None, entries(61, 70, term=2))
    assert snapshot(st, 30, 1) is False  # older than what we have: ignored
    st = backend.restart(st)
    got = st.load()
    assert snapshot_of(got) == snap(45, 2)
    assert got.hard_state == HardState(2, "n1")
    assert [e.index for e in got.entries] == list(range(46, 71))


def test_snapshot_that_disagrees_with_the_log_resets_it(backend: Backend) -> None:
    st = backend.open()
    st.save(HardState(1, "n1"), entries(1, 10, term=1))
    assert snapshot(st, 8, 2)  # a leader's snapshot: our entry 8 has another term
    got = st.load()
    assert got.snapshot_index == 8 and got.entries == []
    st.save(HardState(2, None), entries(9, 9, term=2))
    st = backend.restart(st)
    got = st.load()
    assert [(e.index, e.term) for e in got.entries] == [(9, 2)]
    assert got.hard_state == HardState(2, None)


def test_snapshot_beyond_the_log(backend: Backend) -> None:
    st = backend.open()
    st.save(None, entries(1, 5))
    assert snapshot(st, 20, 3)
    with pytest.raises(ValueError):
        st.save(None, entries(22, 22, term=3))
    st.save(None, entries(21, 22, term=3))
    got = backend.restart(st).load()
    assert got.snapshot_index == 20 and [e.index for e in got.entries] == [21, 22]


def test_batch_reaching_back_into_the_snapshot(backend: Backend) -> None:
    """A batch may start at or before the snapshot index (those entries are
    committed, so identical): only what follows the snapshot is replaced."""
    st = backend.open()
    st.save(None, entries(1, 10, term=1))
    snapshot(st, 5, 1)
    st.save(None, entries(4, 7, term=1, value="again"))
    got = backend.restart(st).load()
    assert [(e.index, e.data) for e in got.entries] == [(6, "again"), (7, "again")]


def test_persisted_state_keeps_snapshot_fields_consistent() -> None:
    def source(index: int, term: int) -> SnapshotSource:
        return MemoryStorage().write_snapshot(SnapshotMeta(index, term, MEMBERSHIP), [])

    s = source(7, 2)
    assert (
        PersistedState(source=s).snapshot_index,
        PersistedState(source=s).snapshot_term,
    ) == (7, 2)
    assert PersistedState(source=s, snapshot_index=7, snapshot_term=2).snapshot_index == 7
    with pytest.raises(ValueError):
        PersistedState(source=s, snapshot_index=3, snapshot_term=1)
    with pytest.raises(ValueError):
        PersistedState(entries=entries(2, 3), source=source(5, 1))
    assert PersistedState().empty and not PersistedState(source=s).empty


def test_memory_storage_remembers_no_identity() -> None:
    assert MemoryStorage().load().incarnation is None


# ---------------------------------------------------------------- randomized model check


@pytest.mark.parametrize("seed", range(4))
def test_disk_matches_memory_under_random_operations(tmp_path: Path, seed: int) -> None:
    """Random saves (with overwrites), snapshots and restarts: the disk storage
    always loads exactly what the memory storage (the model) holds."""
    rng = random.Random(seed)
    model = MemoryStorage()
    path = tmp_path / "node"
    options: dict[str, Any] = {"segment_size": rng.choice([256, 2048, 1 << 20]), "fsync": "never"}
    st = disk(path, **options)
    restarts = snapshots = 0
    term = 1
    for step in range(400):
        cur = model.load()
        base = cur.snapshot_index
        last = cur.entries[-1].index if cur.entries else base
        op = rng.random()
        if op < 0.7:
            term += rng.random() < 0.2
            first = rng.randint(max(base - 2, 1), last + 1) if rng.random() < 0.3 else last + 1
            batch = [
                Entry(i, term, EntryKind.NORMAL, {"s": step})
                for i in range(first, first + rng.randint(0, 5))
            ]
            hs = HardState(term, rng.choice([None, "n1", "n2"])) if rng.random() < 0.3 else None
            for s in (model, st):
                s.save(hs, batch)
        elif op < 0.85:
            index = rng.randint(base + 1, last + 3)
            if index <= last and rng.random() < 0.8:
                t = cur.entries[index - base - 1].term  # agrees with our log
            else:
                t = term = term + rng.randint(0, 1)  # a leader's snapshot
            # Written (as if in a worker), then adopted; payloads of 0 to 3 lines.
            lines = [f"step {step} line {i}".encode() for i in range(rng.randint(0, 3))]
            for s in (model, st):
                assert s.adopt_snapshot(s.write_snapshot(SnapshotMeta(index, t, MEMBERSHIP), lines))
            snapshots += 1
        else:
            restarts += 1
            st.close()
            st = disk(path, **options)
        assert same(st.load(), model.load()), f"seed {seed} step {step}"
    st.close()
    assert same(disk(path, **options).load(), model.load())
    assert restarts > 10 and snapshots > 10


# ---------------------------------------------------------------- reopen and identity


def test_reopen_after_close_equals_saved_state(tmp_path: Path) -> None:
    st = disk(tmp_path, segment_size=300)
    expect = MemoryStorage()
    for i in range(1, 60):
        hs = HardState(i // 10 + 1, f"n{i % 3}")
        batch = entries(i, i, term=i // 10 + 1)
        st.save(hs, batch)
        expect.save(hs, batch)
    assert len(st.segments) > 3  # rotated
    st.close()
    for _ in range(3):  # reopening repeatedly neither loses nor duplicates anything
        st = disk(tmp_path)
        assert same(st.load(), expect.load())
        st.close()
    st = disk(tmp_path)
    st.save(None, entries(60, 61, term=7))
    expect.save(None, entries(60, 61, term=7))
    st.close()
    assert same(disk(tmp_path).load(), expect.load())


def test_identity_is_stored_at_first_start(tmp_path: Path) -> None:
    st = DiskStorage(tmp_path, name="n1", incarnation="abc")
    assert st.load().incarnation == "abc"
    st.close()
    st = DiskStorage(tmp_path, name="n1", incarnation="something-new")
    assert (st.incarnation, st.load().incarnation) == ("abc", "abc")
    st.close()
    with pytest.raises(StorageIdentityError, match="'n1', not 'n2'"):
        DiskStorage(tmp_path, name="n2")


def test_log_without_identity_is_refused(tmp_path: Path) -> None:
    disk(tmp_path).close()
    (tmp_path / "meta.json").unlink()
    with pytest.raises(StorageIdentityError):
        disk(tmp_path)


def test_unknown_fsync_policy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync policy"):
        disk(tmp_path, fsync="sometimes")
    assert not any(tmp_path.iterdir())  # refused before touching the directory


# ---------------------------------------------------------------- torn tails and corruption


def test_torn_tail_at_every_offset_recovers_to_last_whole_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pristine = tmp_path / "pristine"
    st = disk(pristine)
    st.save(HardState(1, "n1"), entries(1, 3))
    before = st.load()
    seg = st.segments[-1]
    start = seg.stat().st_size
    last_hs, last_entry = HardState(2, "n2"), Entry(4, 2, EntryKind.NORMAL, {"k": "é", "v": None})
    st.save(last_hs, [last_entry])
    st.close()
    hs_len = len(encode_hard_state(last_hs))
    end = start + hs_len + len(encode_entry(last_entry))
    assert seg.stat().st_size == end
    work = tmp_path / "work"
    for cut in range(start, end):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        os.truncate(work / "wal" / seg.name, cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kvcluster.storage"):
            st = disk(work)
        got = st.load()
        expected_hs = last_hs if cut >= start + hs_len else before.hard_state
        assert got.hard_state == expected_hs, cut
        assert got.entries == before.entries, cut
        torn = cut not in (start, start + hs_len)
        assert any("torn record" in r.getMessage() for r in caplog.records) == torn, cut
        assert (work / "wal" / seg.name).stat().st_size == (
            start if cut < start + hs_len else start + hs_len
        )
        # and the log goes on from there
        st.save(None, [Entry(4, 3, EntryKind.NOOP)])
        st.close()
        assert disk(work).load().entries[-1] == Entry(4, 3, EntryKind.NOOP)


def test_zeroed_tail_is_torn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    st = disk(tmp_path)
    st.save(HardState(1, "n1"), entries(1, 3))
    seg = st.segments[-1]
    st.close()
    with open(seg, "ab") as f:
        f.write(b"\0" * 4096)  # a filesystem may leave zeroed blocks after a crash
    with caplog.at_level(logging.WARNING, logger="kvcluster.storage"):
        assert [e.index for e in disk(tmp_path).load().entries] == [1, 2, 3]
    assert "torn record" in caplog.text


def _offsets(path: Path) -> list[int]:
    """Start offsets of the records in a segment."""
    buf, out, off = path.read_bytes(), [], 0
    while off < len(buf):
        out.append(off)
        off += FRAME.size + FRAME.unpack_from(buf, off)[0]
    return out


def _flip(path: Path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


@pytest.mark.parametrize("where", ["payload", "crc", "length-low", "length-high"])
def test_flipped_bit_in_a_middle_record_is_an_error(tmp_path: Path, where: str) -> None:
    st = disk(tmp_path)
    for i in range(1, 11):
        st.save(None, entries(i, i))
    seg = st.segments[-1]
    st.close()
    off = _offsets(seg)[4]
    pos, bit = {
        "payload": (off + 12, 3),
        "crc": (off + 5, 0),
        "length-low": (off, 2),
        "length-high": (off + 3, 7),
    }[where]
    _flip(seg, pos, bit)
    with pytest.raises(CorruptLogError) as err:
        disk(tmp_path)
    assert err.value.path == str(seg) and err.value.offset == off
    assert str(seg) in str(err.value) and f"offset {off}" in str(err.value)
    assert seg.stat().st_size > off  # nothing was truncated


def test_flipped_bit_in_a_non_last_segment_is_an_error(tmp_path: Path) -> None:
    st = disk(tmp_path, segment_size=200)
    for i in range(1, 30):
        st.save(HardState(1, "n1"), entries(i, i))
    first = st.segments[0]
    assert len(st.segments) > 2
    st.close()
    last_record = _offsets(first)[-1]  # the tail of a segment that is not the last
    _flip(first, first.stat().st_size - 1)
    with pytest.raises(CorruptLogError, match=f"{first.name} at byte offset {last_record}"):
        disk(tmp_path)
    os.truncate(first, first.stat().st_size - 3)  # a short record there is no torn tail either
    with pytest.raises(CorruptLogError, match="not the last"):
        disk(tmp_path)


def _last_record(path: Path) -> tuple[int, int]:
    """(offset, body length) of the last record of a segment."""
    off = _offsets(path)[-1]
    return off, FRAME.unpack_from(path.read_bytes(), off)[0]


@pytest.mark.parametrize(
    "where", ["entry-body", "entry-crc", "entry-length-shorter", "hard-state-body"]
)
def test_a_corrupted_complete_last_record_stops_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """The file does not end inside the last record, so its bad CRC is no torn
    write: it may be an acknowledged write (with one node, the whole quorum),
    and recovery stops instead of dropping it with a warning."""
    st = disk(tmp_path)
    st.save(HardState(1, "n1"), entries(1, 5))
    if where == "hard-state-body":
        st.save(HardState(2, "n2"), [])
    seg = st.segments[-1]
    st.close()
    size = seg.stat().st_size
    off, n = _last_record(seg)
    pos, bit = {
        "entry-body": (off + FRAME.size + n // 2, 5),
        "entry-crc": (off + 6, 1),
        # clear the length's lowest set bit: shorter, so it still fits in the file
        "entry-length-shorter": (off, (n & -n).bit_length() - 1),
        "hard-state-body": (off + FRAME.size + 1, 0),  # the term
    }[where]
    assert n & 0xFF  # the lowest set bit is in the first byte
    _flip(seg, pos, bit)
    with (
        caplog.at_level(logging.WARNING, logger="kvcluster.storage"),
        pytest.raises(CorruptLogError) as err,
    ):
        disk(tmp_path)
    assert err.value.path == str(seg) and err.value.offset == off
    assert f"{seg} at byte offset {off}" in str(err.value)
    assert "does not end inside it" in str(err.value)
    assert "torn" not in caplog.text
    assert seg.stat().st_size == size  # nothing was truncated


def test_a_complete_last_record_followed_by_zeros_is_still_corrupt(tmp_path: Path) -> None:
    """Zeros after a damaged complete record do not make it torn: only a tail of
    nothing but zeros is bytes that never reached the disk."""
    st = disk(tmp_path)
    st.save(HardState(1, "n1"), entries(1, 3))
    seg = st.segments[-1]
    st.close()
    off, n = _last_record(seg)
    _flip(seg, off + FRAME.size + n - 1)
    with open(seg, "ab") as f:
        f.write(b"\0" * 4096)
    with pytest.raises(CorruptLogError, match=f"at byte offset {off}: CRC mismatch"):
        disk(tmp_path)


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        (b"\xff" * 12, "impossible record length 4294967295, followed by bytes that are not"),
        (b"\0" * 4 + b"junk" + b"\0" * 8, "impossible record length 0, followed by bytes"),
    ],
    ids=["all-ones", "zero-length-then-junk"],
)
def test_an_impossible_length_that_is_no_zeroed_tail_is_corrupt(
    tmp_path: Path, tail: bytes, why: str
) -> None:
    st = disk(tmp_path)
    st.save(HardState(1, "n1"), entries(1, 3))
    seg = st.segments[-1]
    st.close()
    end = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(tail)
    with pytest.raises(CorruptLogError, match=f"at byte offset {end}: {why}"):
        disk(tmp_path)


def test_a_last_record_the_file_ends_inside_is_torn_even_if_its_length_is_damaged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the rule cannot tell: a damaged length that runs past the end of the
    file looks exactly like a record cut short by a crash. It is cut, loudly."""
    st = disk(tmp_path)
    st.save(HardState(1, "n1"), entries(1, 3))
    seg = st.segments[-1]
    st.close()
    off, _ = _last_record(seg)
    _flip(seg, off + 1, 4)  # +4096 bytes: past the end of the file
    with caplog.at_level(logging.WARNING, logger="kvcluster.storage"):
        got = disk(tmp_path).load()
    assert [e.index for e in got.entries] == [1, 2]
    assert f"torn record at byte offset {off}" in caplog.text
    assert seg.stat().st_size == off


# ---------------------------------------------------------------- snapshots and compaction


def test_snapshot_compaction_and_reopen(tmp_path: Path) -> None:
    st = disk(tmp_path, segment_size=400, keep_snapshots=1)
    st.save(HardState(3, "n1"), [])
    for i in range(1, 101):
        st.save(None, entries(i, i, term=3))
    old_segments = st.segments
    assert len(old_segments) > 5
    before = st.load()
    assert snapshot(st, 90, 3, note="ninety")
    assert len(st.snapshot_files) == 1
    remaining = st.segments
    assert old_segments[0] not in remaining and len(remaining) < len(old_segments)
    st.close()
    got = disk(tmp_path).load()
    assert snapshot_of(got) == snap(90, 3, note="ninety")
    assert got.entries == [e for e in before.entries if e.index > 90]
    assert got.hard_state == HardState(3, "n1")


def test_two_snapshots_are_kept_and_the_older_is_a_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    st = disk(tmp_path, segment_size=300)
    st.save(HardState(1, "n1"), entries(1, 50))
    snapshot(st, 20)
    st.save(None, entries(51, 80))
    snapshot(st, 60)
    st.save(None, entries(81, 100))
    snapshot(st, 90)
    files = st.snapshot_files
    assert [f.name.split("-")[0] for f in files] == ["00000000000000000090", "00000000000000000060"]
    st.close()
    _flip(files[0], 40)  # damage the newest snapshot's meta line
    with caplog.at_level(logging.WARNING, logger="kvcluster.storage"):
        got = disk(tmp_path).load()
    assert "unreadable" in caplog.text
    assert snapshot_of(got) == snap(60)
    assert [e.index for e in got.entries] == list(range(61, 101))


@pytest.mark.parametrize("suffix", ["tmp", "part"])
def test_torn_snapshot_temp_file_is_ignored(tmp_path: Path, suffix: str) -> None:
    st = disk(tmp_path)
    st.save(HardState(1, "n1"), entries(1, 10))
    snapshot(st, 5)
    st.close()
    # A crash in the middle of writing (tmp) or receiving (part) snapshot 9.
    src = MemoryStorage().write_snapshot(SnapshotMeta(9, 1, MEMBERSHIP), payload(9))
    torn = tmp_path / "snap" / f"{9:020d}-{1:020d}-1.{suffix}"
    torn.write_bytes(src.read(0, src.size // 2))
    got = disk(tmp_path).load()
    assert snapshot_of(got) == snap(5) and [e.index for e in got.entries] == list(range(6, 11))
    assert not torn.exists()


def test_segments_stay_bounded_under_a_long_write_load(tmp_path: Path) -> None:
    """Snapshot every THRESHOLD applied entries, as the node does: segment and
    snapshot counts stay flat however much is written, and state survives."""
    threshold, total = 200, 20_000
    st = disk(tmp_path, segment_size=4096, fsync="never")
    model = MemoryStorage()
    rng = random.Random(7)
    index, applied_snap, term, counts = 0, 0, 1, []
    while index < total:
        if rng.random() < 0.01:
            term += 1
        batch = entries(index + 1, index + rng.randint(1, 64), term=term, value={"v": "x" * 64})
        hs = HardState(term, "n1")
        st.save(hs, batch)
        model.save(hs, batch)
        index = batch[-1].index
        applied = index - rng.randint(0, 10)  # the state machine lags a little
        if applied - applied_snap >= threshold:
            t = next(e.term for e in model.load().entries if e.index == applied)
            assert snapshot(st, applied, t) and snapshot(model, applied, t)
            applied_snap = applied
        counts.append(len(st.segments))
    bytes_per_snapshot = threshold * len(encode_entry(batch[0]))
    bound = 2 * (2 * bytes_per_snapshot // 4096 + 2)  # two snapshots' worth, generously
    assert max(counts) <= bound, (max(counts), bound)
    assert (
        max(counts[len(counts) // 2 :]) <= max(counts[: len(counts) // 2]) + 1
    )  # flat, not growing
    assert len(st.snapshot_files) == 2
    st.close()
    assert same(disk(tmp_path).load(), model.load())


# ---------------------------------------------------------------- fsync policies


class FsyncCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real: Callable[[int], None] = os.fsync

        def counting(fd: int) -> None:
            self.calls += 1
            real(fd)

        monkeypatch.setattr(os, "fsync", counting)


def test_fsync_always_is_once_per_save_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = disk(tmp_path, fsync="always")
    st.save(HardState(1, "n1"), entries(1, 1))
    st.close()
    st = disk(tmp_path, fsync="always")  # the reopened segment starts with a header
    counter = FsyncCounter(monkeypatch)
    for i in range(2, 22):
        st.save(HardState(i, "n1"), entries(i, i))
    assert counter.calls == 20
    st.save(None, entries(22, 85))  # 64 entries, one fsync
    assert counter.calls == 21
    st.save(None, [])  # nothing to write, nothing to sync
    st.sync()
    assert counter.calls == 21
    st.close()


def test_fsync_batch_is_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    st = disk(tmp_path, fsync="batch", sync_interval=1.0, clock=lambda: now[0])
    st.save(HardState(1, "n1"), [])  # a new vote is fsynced at once (test_hard_state_durability)
    counter = FsyncCounter(monkeypatch)
    for i in range(1, 51):  # 50 saves within half an interval, the hard state unchanged
        st.save(HardState(1, "n1"), entries(i, i))
        now[0] += 0.01
    assert counter.calls == 0
    now[0] = 1.0
    st.save(None, entries(51, 51))  # the oldest unsynced write is an interval old
    assert counter.calls == 1
    st.sync()
    assert counter.calls == 1  # nothing pending
    st.save(None, entries(52, 52))
    st.sync()  # the node's timer: whatever is pending gets synced
    assert counter.calls == 2
    calls_before, start = counter.calls, now[0]
    for i in range(53, 1053):  # 10 simulated seconds of steady writes
        now[0] += 0.01
        st.save(None, entries(i, i))
    assert counter.calls - calls_before <= (now[0] - start) / 1.0 + 1
    assert counter.calls - calls_before >= 9  # and it does sync
    st.close()


def test_fsync_never_never_fsyncs_an_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = disk(tmp_path, fsync="never", segment_size=256)
    st.save(HardState(1, "n1"), [])  # a new vote is fsynced at once (test_hard_state_durability)
    counter = FsyncCounter(monkeypatch)
    for i in range(1, 40):  # segments rotate, the hard state is unchanged
        st.save(HardState(1, "n1"), entries(i, i))
    assert len(st.segments) > 3
    st.sync()
    st.close()
    disk(tmp_path, fsync="never").close()  # recovery, a new segment and its header
    assert counter.calls == 0


def test_snapshot_is_fsynced_before_it_is_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = disk(tmp_path, fsync="batch", sync_interval=3600)
    st.save(HardState(1, "n1"), entries(1, 5))
    counter = FsyncCounter(monkeypatch)
    src = st.write_snapshot(SnapshotMeta(3, 1, MEMBERSHIP), payload(3))
    assert counter.calls == 1  # the file, while it still has its temporary name
    assert st.adopt_snapshot(src)
    assert counter.calls == 2  # its directory, after the rename (the marker waits for sync)
    st.close()


def test_sync_interval_tells_the_node_whether_to_run_a_sync_timer(tmp_path: Path) -> None:
    assert MemoryStorage().sync_interval is None
    for policy in FSYNC_POLICIES:
        st = DiskStorage(tmp_path / policy, name="n1", fsync=policy, sync_interval=0.2)
        assert st.sync_interval == (0.2 if policy == "batch" else None)
        st.close()


def test_an_unreadable_snapshot_whose_entries_were_compacted_stops_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The only snapshot is damaged and compaction already removed the log it
    covers: recovery must not come back with an empty log (and the term and
    vote), which would silently drop 50 committed entries."""
    from kvcluster.kv import KVStore
    from kvcluster.storage import SnapshotMeta

    st = DiskStorage(tmp_path, name="a", segment_size=500)  # the marker lands in a new segment
    kv = KVStore()
    for i in range(1, 51):
        cmd = {"op": "put", "key": f"k{i}", "value": "v" * 100}
        st.save(HardState(1, "a") if i == 1 else None, [Entry(i, 1, data=cmd)])
        kv.apply(i, cmd)
    assert st.adopt_snapshot(st.write_snapshot(SnapshotMeta(50, 1, {}), kv.freeze().lines()))
    st.close()
    (snap,) = (tmp_path / "snap").glob("*.snap")
    damaged = bytearray(snap.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    snap.write_bytes(damaged)
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(CorruptLogError, match="entries would be lost"),
    ):
        DiskStorage(tmp_path, name="a")
