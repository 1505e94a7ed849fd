"""Cost of DiskStorage.save() per fsync policy, for batches of 1 and 64 entries.

    python -m pytest bench/bench_storage.py      # pytest-benchmark
    python bench/bench_storage.py [DIR]           # a table of saves/s, entries/s, MB/s

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

from kvcluster.raft import Entry, EntryKind, HardState
from kvcluster.storage import FSYNC_POLICIES, DiskStorage, FsyncPolicy
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
