"""What a durable term and vote cost: DiskStorage.save timings per fsync policy.

    python bench/hard_state_fsync.py [--dir DIR] [--saves 2000] [--terms 300]

A save that changes the term or the vote is fsynced under every policy (the
node sends the vote or acknowledgement next); an entries-only save keeps the
policy. This times both kinds of save in a directory on the disk under test
(the default is the current directory: /tmp is often a RAM disk).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from kvcluster.raft import Entry, EntryKind, HardState
from kvcluster.storage import FSYNC_POLICIES, DiskStorage, FsyncPolicy


def _us(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49] * 1e6:8.1f} us  p99 {q[98] * 1e6:8.1f} us"


def measure(policy: FsyncPolicy, where: str, saves: int, terms: int) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(dir=where) as d:
        st = DiskStorage(d, name="a", fsync=policy)
        st.save(HardState(1, "a"), [])
        entries_only = []
        for i in range(1, saves + 1):
            batch = [Entry(i, 1, EntryKind.NORMAL, {"k": f"k{i}", "v": "x" * 64})]
            t0 = time.perf_counter()
            st.save(None, batch)
            entries_only.append(time.perf_counter() - t0)
        new_term = []
        for term in range(2, terms + 2):
            t0 = time.perf_counter()
            st.save(HardState(term, "a"), [])
            new_term.append(time.perf_counter() - t0)
        st.close()
    return _us(entries_only), _us(new_term)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".", help="where to write (on the disk to measure)")
    parser.add_argument("--saves", type=int, default=2000, help="entries-only saves")
    parser.add_argument("--terms", type=int, default=300, help="saves with a new term")
    args = parser.parse_args()
    print(f"{'policy':<8} {'entries-only save':<30} {'save with a new term or vote':<30}")
    for policy in FSYNC_POLICIES:
        only, term = measure(policy, args.dir, args.saves, args.terms)
        print(f"{policy:<8} {only:<30} {term:<30}")


if __name__ == "__main__":
    main()
