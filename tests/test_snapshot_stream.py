"""Snapshots as byte streams, and fail-stop storage.

Streams: written from a worker thread while the log keeps being saved, read at
any offset, received in chunks of any size, verified, adopted; crashes at every
step recover to a consistent state. Fail-stop: the first I/O error propagates
and every later call is refused; FailingStorage injects such errors.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from storage_backends import Backend

from kvcluster.kv import KVStore
from kvcluster.raft import Entry, EntryKind, HardState
from kvcluster.storage import (
    DiskStorage,
    FailingStorage,
    MemoryStorage,
    PersistedState,
    SnapshotMeta,
    SnapshotSource,
    Storage,
    StorageError,
    StorageFailed,
)
from kvcluster.storage import wal as wal_module
from kvcluster.storage.snapshots import SnapshotFile
from kvcluster.storage.stream import MAGIC, TRAILER_LEN, encode_trailer

MEMBERSHIP = {"n1": {"address": "http://127.0.0.1:1", "voter": True, "incarnation": ""}}


def entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, EntryKind.NORMAL, {"k": f"key{i}"}) for i in range(lo, hi + 1)]


def meta(index: int, term: int = 1) -> SnapshotMeta:
    return SnapshotMeta(index, term, MEMBERSHIP)


def payload(n: int, tag: str = "") -> list[bytes]:
    """n opaque lines, varied in length (some empty)."""
    return [f"line {i} {tag} ✓ ".encode() * (i % 5) for i in range(n)]


def kv_lines(keys: int) -> list[bytes]:
    store = KVStore()
    for i in range(1, keys + 1):
        store.apply(i, {"op": "put", "key": f"k{i:05d}", "value": "v" * 64})
    return list(store.freeze().lines(rows_per_line=16))


def whole(src: SnapshotSource) -> bytes:
    return src.read(0, src.size)


def disk(path: Path, **options: Any) -> DiskStorage:
    return DiskStorage(path, name="n1", **options)


# ---------------------------------------------------------------- the stream format


def test_stream_format(backend: Backend) -> None:
    st = backend.open()
    lines = [b"first", b"", b"\xff\x00 binary is fine"]
    src = st.write_snapshot(meta(7, 2), lines)
    data = whole(src)
    assert src.size == len(data)
    head, meta_line, rest = data.split(b"\n", 2)
    assert head + b"\n" == MAGIC
    assert json.loads(meta_line) == {
        "index": 7,
        "term": 2,
        "membership": MEMBERSHIP,
        "payload": "lines",
    }
    body, trailer = rest[:-TRAILER_LEN], rest[-TRAILER_LEN:]
    assert body == b"first\n\n\xff\x00 binary is fine\n"
    crc = zlib.crc32(data[:-TRAILER_LEN])
    assert trailer == b"END %020d %08x\n" % (3, crc)
    assert list(src.payload()) == lines
    assert src.meta == meta(7, 2)


def test_lines_with_a_newline_are_refused_and_leave_nothing(backend: Backend) -> None:
    st = backend.open()
    with pytest.raises(ValueError, match="newline"):
        st.write_snapshot(meta(3), [b"ok", b"not\nok"])
    st.save(None, entries(1, 3))  # a caller's bug, not a disk failure: still usable
    if backend.kind == "disk":
        assert not list((backend.path / "snap").iterdir())


def test_empty_payload(backend: Backend) -> None:
    st = backend.open()
    st.save(None, entries(1, 3))
    src = st.write_snapshot(meta(2), [])
    assert list(src.payload()) == []
    assert st.adopt_snapshot(src)
    st = backend.restart(st)
    got = st.load().source
    assert got is not None and list(got.payload()) == [] and got.meta == meta(2)


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096, 1 << 30])
def test_read_at_offsets_is_exact(backend: Backend, chunk: int) -> None:
    st = backend.open()
    src = st.write_snapshot(meta(5), kv_lines(300))
    data = whole(src)
    assert b"".join(src.read(off, chunk) for off in range(0, src.size, chunk)) == data
    assert src.read(src.size, 10) == b""
    assert src.read(3, 0) == b""
    assert src.read(src.size - 2, 10) == data[-2:]
    for off, n in [(-1, 1), (src.size + 1, 1), (0, -1)]:
        with pytest.raises(ValueError):
            src.read(off, n)


# ---------------------------------------------------------------- write, adopt, load


def test_write_adopt_load_round_trip(backend: Backend) -> None:
    st = backend.open()
    st.save(HardState(2, "n1"), entries(1, 10, term=2))
    lines = kv_lines(100)
    src = st.write_snapshot(meta(8, 2), lines)
    assert st.load().source is None  # written is not adopted
    assert st.latest_snapshot() is None
    assert st.adopt_snapshot(src) is True
    assert st.latest_snapshot() is src
    for _ in range(2):
        got = st.load()
        assert got.source is not None and got.source.meta == meta(8, 2)
        assert (got.snapshot_index, got.snapshot_term) == (8, 2)
        assert list(got.source.payload()) == lines
        assert whole(got.source) == whole(src)
        assert KVStore.from_lines(got.source.payload()) == KVStore.from_lines(lines)
        assert [e.index for e in got.entries] == [9, 10]
        assert got.hard_state == HardState(2, "n1")
        st = backend.restart(st)


def test_adopting_an_older_snapshot_is_ignored(backend: Backend) -> None:
    st = backend.open()
    st.save(None, entries(1, 20))
    newer = st.write_snapshot(meta(15), payload(2, "new"))
    older = st.write_snapshot(meta(10), payload(2, "old"))
    assert st.adopt_snapshot(newer)
    assert st.adopt_snapshot(older) is False
    got = backend.restart(st).load()
    assert got.source is not None and list(got.source.payload()) == payload(2, "new")
    if backend.kind == "disk":
        assert [p.suffix for p in (backend.path / "snap").iterdir()] == [".snap"]


def test_only_own_sources_can_be_adopted(tmp_path: Path) -> None:
    a, b = disk(tmp_path / "a"), disk(tmp_path / "b")
    m1, m2 = MemoryStorage(), MemoryStorage()
    pairs: list[tuple[Storage, Storage]] = [(a, b), (a, m1), (m1, m2), (m1, a)]
    for st, other in pairs:
        src = other.write_snapshot(meta(1), [])
        with pytest.raises(ValueError, match="only a snapshot this storage"):
            st.adopt_snapshot(src)
    src = a.write_snapshot(meta(1), [])
    assert a.adopt_snapshot(src)
    with pytest.raises(ValueError, match="adopted already"):
        a.adopt_snapshot(src)


# ---------------------------------------------------------------- receiving


def chunks(data: bytes, rng: random.Random, biggest: int) -> Iterator[bytes]:
    off = 0
    while off < len(data):
        n = rng.randint(1, biggest)
        yield data[off : off + n]
        off += n


@pytest.mark.parametrize("sender_kind", ["memory", "disk"])
def test_receive_in_chunks_of_any_size(backend: Backend, tmp_path: Path, sender_kind: str) -> None:
    sender = Backend(sender_kind, tmp_path / "leader", segment_size=512).open()
    lines = kv_lines(500)
    src = sender.write_snapshot(meta(40, 3), lines)
    st = backend.open()
    st.save(HardState(3, "n2"), entries(1, 5, term=1))
    rng = random.Random(1)
    for biggest in (1, 13, 5000):
        rx = st.open_receiver(meta(40, 3), src.size)
        # A leader sends read(offset, n) from the offset the follower reports.
        while rx.received < src.size:
            rx.write(src.read(rx.received, rng.randint(1, biggest)))
        got = rx.finish()
        assert whole(got) == whole(src) and list(got.payload()) == lines
    assert st.adopt_snapshot(got)
    st = backend.restart(st)
    loaded = st.load()
    assert loaded.source is not None and whole(loaded.source) == whole(src)
    assert loaded.entries == [] and loaded.hard_state == HardState(3, "n2")


def test_receiver_without_announced_size(backend: Backend) -> None:
    src = MemoryStorage().write_snapshot(meta(4), payload(20))
    rx = backend.open().open_receiver(meta(4))
    for part in chunks(whole(src), random.Random(2), 50):
        rx.write(part)
    assert list(rx.finish().payload()) == payload(20)


def _damaged(data: bytes, how: str) -> bytes:
    if how == "flipped payload bit":
        i = len(data) // 2
        return data[:i] + bytes([data[i] ^ 4]) + data[i + 1 :]
    if how == "flipped crc digit":
        i = len(data) - 2
        return data[:i] + (b"0" if data[i : i + 1] != b"0" else b"1") + data[i + 1 :]
    if how == "truncated":
        return data[:-1]
    if how == "no trailer":
        return data[:-TRAILER_LEN]
    if how == "a line dropped":
        head, rest = data.split(b"\n", 2)[:2], data.split(b"\n", 2)[2]
        body, trailer = rest[:-TRAILER_LEN], rest[-TRAILER_LEN:]
        first_line_end = body.index(b"\n") + 1
        return b"\n".join(head) + b"\n" + body[first_line_end:] + trailer
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["flipped payload bit", "flipped crc digit", "truncated", "no trailer", "a line dropped"]
)
def test_receiver_refuses_a_damaged_stream_at_finish(backend: Backend, how: str) -> None:
    src = MemoryStorage().write_snapshot(meta(4), payload(20))
    st = backend.open()
    rx = st.open_receiver(meta(4))
    rx.write(_damaged(whole(src), how))
    with pytest.raises(ValueError):
        rx.finish()
    with pytest.raises(ValueError):
        rx.finish()
    st.save(None, entries(1, 2))  # the storage itself is fine
    if backend.kind == "disk":
        assert not list((backend.path / "snap").glob("*.part"))


@pytest.mark.parametrize(
    "what", ["term", "index", "membership", "magic", "size", "meta json", "json payload"]
)
def test_receiver_refuses_a_wrong_stream_early(backend: Backend, what: str) -> None:
    src = MemoryStorage().write_snapshot(meta(4, 2), payload(50))
    data = whole(src)
    announced, size = meta(4, 2), src.size
    if what == "term":
        announced = meta(4, 3)
    elif what == "index":
        announced = meta(5, 2)
    elif what == "membership":
        announced = SnapshotMeta(4, 2, {})
    elif what == "magic":
        data = b"KVSNAP01" + data[8:]
    elif what == "size":
        size = src.size - 1
    elif what == "json payload":  # an older leader's one-document snapshot
        data = data.replace(b'"payload":"lines"', b'"payload":"json"')
    else:
        data = data.replace(b'"term":2', b'"term":"2"')
    rx = backend.open().open_receiver(announced, size)
    with pytest.raises(ValueError):
        for part in chunks(data, random.Random(3), 100):
            rx.write(part)
    assert rx.received < len(data)
    with pytest.raises(ValueError):
        rx.write(b"x")  # spent
    rx.abort()


def test_abort_drops_the_partial_file(tmp_path: Path) -> None:
    st = disk(tmp_path)
    src = st.write_snapshot(meta(4), payload(10))
    rx = st.open_receiver(meta(4), src.size)
    rx.write(src.read(0, 100))
    assert len(list((tmp_path / "snap").glob("*.part"))) == 1
    rx.abort()
    rx.abort()
    assert not list((tmp_path / "snap").glob("*.part"))
    with pytest.raises(ValueError):
        rx.write(b"more")


def test_a_source_outlives_compaction(tmp_path: Path) -> None:
    """A leader may be half way through sending a snapshot a newer one replaces."""
    st = disk(tmp_path, keep_snapshots=1)
    st.save(None, entries(1, 30))
    first = st.write_snapshot(meta(10), payload(30, "first"))
    st.adopt_snapshot(first)
    expected = whole(first)
    sent = first.read(0, 50)
    for i in (20, 30):
        st.adopt_snapshot(st.write_snapshot(meta(i), payload(3)))
    assert len(st.snapshot_files) == 1 and not first.path.exists()
    assert sent + first.read(50, first.size) == expected


# ---------------------------------------------------------------- threads


def test_write_snapshot_in_a_worker_while_the_loop_saves(tmp_path: Path) -> None:
    st = disk(tmp_path, segment_size=2048, fsync="batch")
    st.save(HardState(1, "n1"), entries(1, 100))
    store = KVStore()
    for i in range(1, 3001):
        store.apply(i, {"op": "put", "key": f"k{i}", "value": "v" * 64})
    frozen = store.freeze()
    started = threading.Event()

    def lines() -> Iterator[bytes]:
        for line in frozen.lines(rows_per_line=8):
            started.set()
            yield line

    result: list[SnapshotSource] = []
    worker = threading.Thread(target=lambda: result.append(st.write_snapshot(meta(90), lines())))
    worker.start()
    started.wait(10)
    index = 100
    while worker.is_alive() or index < 200:  # the loop keeps saving meanwhile
        st.save(HardState(1, "n1"), entries(index + 1, index + 1))
        index += 1
    worker.join()
    assert st.adopt_snapshot(result[0])
    st.close()
    got = disk(tmp_path).load()
    assert got.source is not None and KVStore.from_lines(got.source.payload()) == store
    assert [e.index for e in got.entries] == list(range(91, index + 1))


# ---------------------------------------------------------------- crashes


def crash_image(src: Path, dst: Path) -> Path:
    """What the disk holds if the process died now (the page cache survives)."""
    shutil.copytree(src, dst)
    return dst


def test_crash_mid_snapshot_write_keeps_the_old_state(tmp_path: Path) -> None:
    node = tmp_path / "node"
    st = disk(node)
    st.save(HardState(1, "n1"), entries(1, 20))
    st.adopt_snapshot(st.write_snapshot(meta(5), payload(4, "old")))
    images = []

    def lines() -> Iterator[bytes]:
        for i, line in enumerate(payload(40, "new")):
            if i in (0, 20):
                images.append(crash_image(node, tmp_path / f"crash{i}"))
            yield line

    src = st.write_snapshot(meta(15), lines())
    images.append(crash_image(node, tmp_path / "written"))  # written, never adopted
    for image in images:
        assert list((image / "snap").glob("*.tmp"))
        got = disk(image).load()
        assert got.source is not None and list(got.source.payload()) == payload(4, "old")
        assert [e.index for e in got.entries] == list(range(6, 21))
        assert not list((image / "snap").glob("*.tmp"))
    assert st.adopt_snapshot(src)


@pytest.mark.parametrize("agrees", [True, False])
def test_crash_after_rename_before_the_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agrees: bool
) -> None:
    """The snapshot is durable first; if the process dies before the marker is
    logged, recovery applies it (keeping the entries after it only if their
    terms agreed) and writes the marker, so later saves survive."""
    node = tmp_path / "node"
    st = disk(node)
    st.save(HardState(1, "n1"), entries(1, 10, term=1))
    src = st.write_snapshot(meta(8, 1 if agrees else 2), payload(5))

    class Crash(Exception):
        pass

    def crash(data: bytes) -> None:
        raise Crash

    monkeypatch.setattr(st._writer, "append", crash)
    with pytest.raises(Crash):
        st.adopt_snapshot(src)
    monkeypatch.undo()
    st = disk(node)  # the old one "died" without closing
    got = st.load()
    assert got.source is not None and list(got.source.payload()) == payload(5)
    assert (got.snapshot_index, got.snapshot_term) == (8, 1 if agrees else 2)
    assert [e.index for e in got.entries] == ([9, 10] if agrees else [])
    st.save(None, entries(11 if agrees else 9, 12, term=2))
    st.close()
    got = disk(node).load()
    assert [(e.index, e.term) for e in got.entries] == (
        [(9, 1), (10, 1), (11, 2), (12, 2)] if agrees else [(9, 2), (10, 2), (11, 2), (12, 2)]
    )


def test_crash_mid_receive(tmp_path: Path) -> None:
    node = tmp_path / "node"
    st = disk(node)
    st.save(HardState(1, "n1"), entries(1, 10))
    src = MemoryStorage().write_snapshot(meta(50, 2), payload(30))
    rx = st.open_receiver(meta(50, 2), src.size)
    rx.write(src.read(0, src.size // 2))
    image = crash_image(node, tmp_path / "crash")
    got = disk(image).load()
    assert got.source is None and [e.index for e in got.entries] == list(range(1, 11))
    assert not list((image / "snap").glob("*.part"))
    rx.write(src.read(rx.received, src.size))
    received = rx.finish()
    image = crash_image(node, tmp_path / "crash2")  # finished, not adopted
    assert disk(image).load().source is None
    assert st.adopt_snapshot(received)
    assert disk(crash_image(node, tmp_path / "crash3")).load().snapshot_index == 50


def test_damaged_newest_falls_back_to_the_older(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    st = disk(tmp_path, segment_size=300)
    st.save(HardState(1, "n1"), entries(1, 50))
    st.adopt_snapshot(st.write_snapshot(meta(20), payload(5, "20")))
    st.save(None, entries(51, 80))
    st.adopt_snapshot(st.write_snapshot(meta(60), payload(5, "60")))
    newest = st.snapshot_files[0]
    st.close()
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 1
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="kvcluster.storage"):
        got = disk(tmp_path).load()
    assert "CRC mismatch" in caplog.text
    assert got.source is not None and list(got.source.payload()) == payload(5, "20")
    assert [e.index for e in got.entries] == list(range(21, 81))


def test_snapshot_in_the_old_format_is_refused_loudly(tmp_path: Path) -> None:
    disk(tmp_path).close()
    (tmp_path / "snap" / f"{9:020d}-{1:020d}-{1:016d}.snap").write_bytes(b"KVSNAP01...")
    with pytest.raises(StorageError, match="older format"):
        disk(tmp_path)


def _json_payload_file(path: Path, index: int) -> Path:
    """A sound `.snap` of the one-document payload earlier versions wrote."""
    line = {"index": index, "term": 1, "membership": MEMBERSHIP, "payload": "json"}
    head = MAGIC + json.dumps(line, separators=(",", ":")).encode("ascii") + b"\n"
    body = head + b'{"format":1,"revision":0,"applied_index":%d,"data":[]}\n' % index
    f = path / "snap" / SnapshotFile.name(index, 1, 1, True)
    f.write_bytes(body + encode_trailer(1, zlib.crc32(body)))
    return f


def test_snapshot_with_the_old_json_payload_is_refused_loudly(tmp_path: Path) -> None:
    """Not taken for a damaged file (that would fall back past it, or to nothing
    if the log it compacted is gone): recovery stops and says why."""
    st = disk(tmp_path)
    st.save(HardState(1, "n1"), entries(1, 20))
    st.close()
    old = _json_payload_file(tmp_path, 10)
    with pytest.raises(StorageError, match="older format"):
        disk(tmp_path)
    assert old.exists()  # not renamed away as `.corrupt`
    # Once a newer snapshot in the current format exists, the old one is never read.
    st = disk(tmp_path / "b")
    st.save(HardState(1, "n1"), entries(1, 20))
    _json_payload_file(tmp_path / "b", 10)
    st.adopt_snapshot(st.write_snapshot(meta(15), payload(2)))
    st.close()
    got = disk(tmp_path / "b").load()
    assert got.snapshot_index == 15 and [e.index for e in got.entries] == list(range(16, 21))


# ---------------------------------------------------------------- fail-stop


class FsyncFault:
    """An fsync that fails on its Nth call (and counts every call)."""

    def __init__(self, fail_at: int, code: int = errno.EIO) -> None:
        self.calls, self.fail_at, self.code = 0, fail_at, code

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(self.code, os.strerror(self.code))
        os.fsync(fd)


def refuses_everything(st: Storage) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: st.save(None, []),
        lambda: st.save(HardState(9, "n9"), []),
        st.sync,
        st.load,
        st.latest_snapshot,
        lambda: st.write_snapshot(meta(99), []),
        lambda: st.adopt_snapshot(MemoryStorage().write_snapshot(meta(99), [])),
        lambda: st.open_receiver(meta(99)),
    ]
    for call in calls:
        with pytest.raises(StorageFailed, match="an earlier write failed"):
            call()


def test_a_failed_fsync_stops_the_disk_storage(tmp_path: Path) -> None:
    fault = FsyncFault(fail_at=1)
    st = disk(tmp_path, fsync="always")
    st.save(HardState(1, "n1"), entries(1, 5))
    st.fsync_fn = fault
    with pytest.raises(OSError) as err:
        st.save(None, entries(6, 8))
    assert err.value.errno == errno.EIO and st.failed is err.value
    refuses_everything(st)
    st.close()  # releases the file without a second fsync
    assert fault.calls == 1
    got = disk(tmp_path).load()
    # The failed batch may or may not be on disk; nothing after it can be.
    assert [e.index for e in got.entries] in (list(range(1, 6)), list(range(1, 9)))


def test_a_torn_write_on_enospc_is_cut_at_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    st = disk(tmp_path, fsync="always")
    st.save(HardState(1, "n1"), entries(1, 5))
    real_write = os.write

    def short_then_enospc(fd: int, data: Any) -> int:
        if len(data) > 10:
            return real_write(fd, bytes(data)[: len(data) // 2])  # half of the batch lands
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wal_module.os, "write", short_then_enospc)
    with pytest.raises(OSError, match="No space"):
        st.save(None, entries(6, 9))
    monkeypatch.undo()
    refuses_everything(st)
    st.close()
    with caplog.at_level(logging.WARNING, logger="kvcluster.storage"):
        got = disk(tmp_path).load()
    assert "torn record" in caplog.text
    assert [e.index for e in got.entries][:5] == [1, 2, 3, 4, 5]
    assert [e.index for e in got.entries] == list(range(1, len(got.entries) + 1))


def test_a_failed_snapshot_write_in_a_worker_stops_the_loop_too(tmp_path: Path) -> None:
    st = disk(tmp_path)
    st.save(HardState(1, "n1"), entries(1, 5))

    def lines() -> Iterator[bytes]:
        yield b"one"
        raise OSError(errno.ENOSPC, "No space left on device")

    errors: list[BaseException] = []

    def work() -> None:
        try:
            st.write_snapshot(meta(4), lines())
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert isinstance(errors[0], OSError) and errors[0].errno == errno.ENOSPC
    with pytest.raises(StorageFailed):
        st.save(None, entries(6, 6))  # the loop thread's next call
    st.close()
    got = disk(tmp_path).load()
    assert got.source is None and [e.index for e in got.entries] == [1, 2, 3, 4, 5]
    assert not list((tmp_path / "snap").glob("*.tmp"))


def test_emfile_opening_a_receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = disk(tmp_path)
    import kvcluster.storage.snapshots as snapshots_module

    def no_fds(*args: Any) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(snapshots_module.os, "open", no_fds)
    with pytest.raises(OSError) as err:
        st.open_receiver(meta(3))
    monkeypatch.undo()
    assert err.value.errno == errno.EMFILE
    refuses_everything(st)


def test_caller_errors_do_not_poison(backend: Backend) -> None:
    st = backend.open()
    st.save(None, entries(1, 3))
    with pytest.raises(ValueError):
        st.save(None, entries(5, 6))
    with pytest.raises(ValueError):
        st.write_snapshot(SnapshotMeta(-1, 1), [])
    st.save(None, entries(4, 4))
    assert [e.index for e in st.load().entries] == [1, 2, 3, 4]


# ---------------------------------------------------------------- FailingStorage


def run_until_failure(st: Storage, rng: random.Random) -> tuple[list[Entry], OSError]:
    """Saves, snapshots and receptions as a node makes them, until the storage
    fails; returns the entries whose save returned (the acknowledged ones)."""
    acked: list[Entry] = []
    index, snap = 0, 0
    try:
        for step in range(1000):
            roll = rng.random()
            if roll < 0.7 or index - snap < 3:
                batch = entries(index + 1, index + rng.randint(1, 4))
                st.save(HardState(1, "n1"), batch)
                acked += batch
                index = batch[-1].index
            elif roll < 0.9:
                snap = index - (1 if roll < 0.8 else 2)
                st.adopt_snapshot(st.write_snapshot(meta(snap), payload(3, str(step))))
            else:
                src = MemoryStorage().write_snapshot(meta(index), payload(2, str(step)))
                rx = st.open_receiver(src.meta, src.size)
                for part in chunks(whole(src), rng, 40):
                    rx.write(part)
                st.adopt_snapshot(rx.finish())
                snap = index
            st.sync()
    except OSError as e:
        return acked, e
    raise AssertionError("the storage never failed")


@pytest.mark.parametrize("kind", ["save", "fsync", "snapshot"])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_failing_storage(backend: Backend, kind: str, n: int) -> None:
    inner = backend.open(fsync="always") if backend.kind == "disk" else backend.open()
    st = FailingStorage(inner, fail_on=(kind, n))
    acked, err = run_until_failure(st, random.Random(n))
    assert err.errno == (errno.EIO if kind == "fsync" else errno.ENOSPC)
    assert "injected" in str(err) and st.failed is err
    refuses_everything(st)
    if backend.kind == "disk":
        refuses_everything(inner)  # the disk is just as dead underneath
    # Restart from what the disk holds: every acknowledged entry is there (or
    # covered by a snapshot), and the log is one contiguous run.
    got: PersistedState = backend.restart(inner).load() if backend.kind == "disk" else inner.load()
    have = {e.index for e in got.entries}
    assert all(e.index <= got.snapshot_index or e.index in have for e in acked)
    assert sorted(have) == list(range(got.snapshot_index + 1, got.snapshot_index + len(have) + 1))


def test_failing_storage_counts_disk_fsyncs_inside_the_wal(tmp_path: Path) -> None:
    st = FailingStorage(disk(tmp_path, fsync="always"), fail_on=("fsync", 3))
    st.save(HardState(1, "n1"), entries(1, 1))  # segment's directory was synced at open
    assert st.calls == 1
    st.save(None, entries(2, 2))
    with pytest.raises(OSError):
        st.save(None, entries(3, 3))
    assert st.calls == 3
    with pytest.raises(StorageFailed):
        st.sync()


def test_failing_storage_rejects_unknown_faults() -> None:
    with pytest.raises(ValueError):
        FailingStorage(MemoryStorage(), fail_on=("write", 1))
    with pytest.raises(ValueError):
        FailingStorage(MemoryStorage(), fail_on=("save", 0))
