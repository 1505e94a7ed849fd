"""Cost of DiskStorage.save() per fsync policy, for batches of 1 and 64 entries,
and of each step of a streamed snapshot at 10,000 keys.

    python -m pytest bench/bench_storage.py      # pytest-benchmark
    python bench/bench_storage.py [DIR]           # a table of saves/s, entries/s, MB/s
    python bench/snapshot_gil.py                  # snapshots at 1,000,000 keys, loop gaps

Each entry carries a 64-byte value, as a small kv put would. `always` is one
fsync per save (group commit: the batch of 64 pays one fsync), so it measures
the disk's fsync latency; `batch` and `never` measure the encode + write path.
The directory matters: run it on the disk the nodes will use (tmpfs has free fsyncs).
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from kvcluster.kv import KVStore
from kvcluster.raft import Entry, EntryKind, HardState
from kvcluster.storage import FSYNC_POLICIES, DiskStorage, FsyncPolicy, MemoryStorage, SnapshotMeta
from kvcluster.storage.wal import encode_entry

VALUE = "v" * 64
HS = HardState(1, "n1")


def command(i: int) -> dict[str, str]:
    return {"op": "put", "key": f"key{i}", "value": VALUE}


class Writer:
    """Saves consecutive batches, as a leader persisting its proposals does."""

    def __init__(self, path: Path, policy: FsyncPolicy, batch: int) -> None:
        self.storage = DiskStorage(path, name="bench", fsync=policy)
        self.batch = batch
        self.next = itertools.count(1)

    def save(self) -> None:
        batch = [
            Entry(i, 1, EntryKind.NORMAL, command(i))
            for i in itertools.islice(self.next, self.batch)
        ]
        self.storage.save(HS, batch)


def entry_bytes() -> int:
    return len(encode_entry(Entry(1000, 1, EntryKind.NORMAL, command(1000))))


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("policy", FSYNC_POLICIES)
def test_save(benchmark: Any, tmp_path: Path, policy: FsyncPolicy, batch: int) -> None:
    w = Writer(tmp_path / "node", policy, batch)
    benchmark(w.save)
    w.storage.close()
    benchmark.extra_info.update(policy=policy, batch=batch, record_bytes=entry_bytes())


# ---------------------------------------------------------------- snapshots
#
# Small sizes for pytest-benchmark; the 1,000,000-key figures (and the event
# loop's gaps while a worker thread does the work) come from bench/snapshot_gil.py.

SNAPSHOT_KEYS = 10_000


@pytest.fixture(scope="module")
def kv_store() -> KVStore:
    store = KVStore()
    for i in range(1, SNAPSHOT_KEYS + 1):
        store.apply(i, {"op": "put", "key": f"key/{i:09d}", "value": VALUE})
    return store


def test_snapshot_freeze(benchmark: Any, kv_store: KVStore) -> None:
    benchmark(kv_store.freeze)
    benchmark.extra_info.update(keys=SNAPSHOT_KEYS)


@pytest.mark.parametrize("policy", ["always", "never"])
def test_snapshot_write(
    benchmark: Any, tmp_path: Path, kv_store: KVStore, policy: FsyncPolicy
) -> None:
    """lines() + write_snapshot(): what the worker thread does."""
    st = DiskStorage(tmp_path / "node", name="bench", fsync=policy)
    frozen = kv_store.freeze()
    meta = SnapshotMeta(kv_store.applied_index, 1, {})
    src = benchmark(lambda: st.write_snapshot(meta, frozen.lines()))
    benchmark.extra_info.update(keys=SNAPSHOT_KEYS, bytes=src.size, policy=policy)
    st.close()


def test_snapshot_receive(benchmark: Any, tmp_path: Path, kv_store: KVStore) -> None:
    """A follower receiving 64 KiB chunks, then finish() (fsync + verification)."""
    st = DiskStorage(tmp_path / "node", name="bench", fsync="always")
    meta = SnapshotMeta(kv_store.applied_index, 1, {})
    src = MemoryStorage().write_snapshot(meta, kv_store.freeze().lines())

    def receive() -> None:
        rx = st.open_receiver(meta, src.size)
        while rx.received < src.size:
            rx.write(src.read(rx.received, 64 << 10))
        rx.finish().close()

    benchmark(receive)
    benchmark.extra_info.update(keys=SNAPSHOT_KEYS, bytes=src.size)
    st.close()


def test_snapshot_from_lines(benchmark: Any, kv_store: KVStore) -> None:
    lines = list(kv_store.freeze().lines())
    rebuilt = benchmark(KVStore.from_lines, lines)
    assert rebuilt == kv_store
    benchmark.extra_info.update(keys=SNAPSHOT_KEYS)


def measure(directory: Path, policy: FsyncPolicy, batch: int, seconds: float = 1.0) -> float:
    """Saves per second over about `seconds`."""
    with tempfile.TemporaryDirectory(dir=directory) as d:
        w = Writer(Path(d), policy, batch)
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            w.save()
            n += 1
        w.storage.close()
    return n / elapsed


def main(directory: Path) -> None:
    size = entry_bytes()
    print(f"DiskStorage.save() in {directory} ({size} bytes per framed entry)")
    head = ("policy", "batch", "saves/s", "entries/s", "MB/s", "ms/save")
    print("{:<8} {:>5} {:>10} {:>11} {:>8} {:>8}".format(*head))
    for policy in FSYNC_POLICIES:
        for batch in (1, 64):
            rate = measure(directory, policy, batch)
            mb = rate * batch * size / 1e6
            print(
                f"{policy:<8} {batch:>5} {rate:>10.0f} {rate * batch:>11.0f} {mb:>8.2f}"
                f" {1000 / rate:>8.3f}"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir()))
