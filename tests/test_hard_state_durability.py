"""The term and the vote reach the disk before `save()` returns, whatever the fsync policy.

The fsync policy (`always`, `batch`, `never`) is for entries. A node sends its
vote, or an acknowledgement carrying its new term, right after saving the hard
state; under `batch` or `never` a machine crash used to lose that hard state, so
the node could come back and vote again in the same term (issue 12).

Counted through DiskStorage's `fsync_fn` hook, and checked with a model of a
power cut: a file keeps only the bytes it had at its last fsync, a directory
only the names it had at its last fsync.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from kvcluster.raft import Entry, EntryKind, HardState
from kvcluster.storage import FSYNC_POLICIES, DiskStorage, FsyncPolicy, SnapshotMeta

DEFERRING = ["batch", "never"]


def entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, EntryKind.NORMAL, {"k": f"k{i}"}) for i in range(lo, hi + 1)]


class PowerCut:
    """DiskStorage's fsync_fn: does the real fsync, and remembers what it made
    durable, so that `restore` can build what a machine crash would leave.

    Files are keyed by inode (a renamed file keeps its synced bytes); use it
    only where nothing is unlinked, or a reused inode number would confuse it.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []  # the path of each fsync, in order
        self.files: dict[int, bytes] = {}  # inode -> bytes as of its last fsync
        self.dirs: dict[int, dict[str, tuple[int, bool]]] = {}  # inode -> name: (inode, dir?)

    def __call__(self, fd: int) -> None:
        os.fsync(fd)
        where = f"/proc/self/fd/{fd}"
        self.calls.append(os.readlink(where))
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(where) as it:
                self.dirs[st.st_ino] = {
                    e.name: (e.inode(), e.is_dir(follow_symlinks=False)) for e in it
                }
        else:
            with open(where, "rb") as f:
                self.files[st.st_ino] = f.read()

    def restore(self, root: Path, into: Path) -> None:
        """Write into `into` what `root` holds after a power cut now."""
        self._build(os.stat(root).st_ino, into)

    def _build(self, ino: int, into: Path) -> None:
        into.mkdir()
        for name, (child, is_dir) in self.dirs.get(ino, {}).items():
            if is_dir:
                self._build(child, into / name)
            else:  # a durable name whose data never was: an empty file
                (into / name).write_bytes(self.files.get(child, b""))


def counted(path: Path, policy: FsyncPolicy, **options: Any) -> tuple[DiskStorage, PowerCut]:
    """A storage whose fsyncs go through a PowerCut (and `batch` never syncs on time)."""
    cut = PowerCut()
    st = DiskStorage(path, name="a", fsync=policy, sync_interval=3600.0, fsync_fn=cut, **options)
    return st, cut


@pytest.mark.parametrize("policy", FSYNC_POLICIES)
def test_a_save_that_changes_the_term_or_vote_is_fsynced_before_it_returns(
    tmp_path: Path, policy: FsyncPolicy
) -> None:
    st, cut = counted(tmp_path, policy)
    for hs in (HardState(1, None), HardState(1, "b"), HardState(2, None), HardState(2, "a")):
        cut.calls.clear()
        st.save(hs, entries(1, 2) if hs.term == 1 and hs.vote is None else [])
        segment = str(st.segments[-1])
        assert segment in cut.calls, (hs, cut.calls)  # the segment holding it, in this call
        assert len(cut.calls) <= 2  # the segment, and its directory entry if not synced yet
    st.close()


@pytest.mark.parametrize("policy", DEFERRING)
def test_an_entries_only_save_keeps_the_policy(tmp_path: Path, policy: FsyncPolicy) -> None:
    st, cut = counted(tmp_path, policy)
    st.save(HardState(3, "a"), entries(1, 1))
    cut.calls.clear()
    st.save(None, entries(2, 5))
    st.save(HardState(3, "a"), entries(6, 6))  # the same hard state again: no change
    assert cut.calls == []
    st.close()


@pytest.mark.parametrize("policy", DEFERRING)
def test_a_power_cut_keeps_every_saved_vote_and_loses_only_unsynced_entries(
    tmp_path: Path, policy: FsyncPolicy
) -> None:
    data = tmp_path / "data"
    st, cut = counted(data, policy)
    st.save(HardState(1, "a"), entries(1, 5))
    st.save(None, entries(6, 10))  # deferred: only the next fsync makes them durable
    st.save(HardState(2, "b"), [])  # fsynced, and the entries before it in the file with it
    st.save(None, entries(11, 12, term=2))  # deferred, and never synced: lost in the cut
    cut.restore(data, tmp_path / "after")
    st.close()
    got = DiskStorage(tmp_path / "after", name="a", fsync=policy).load()
    assert got.hard_state == HardState(2, "b")
    assert [e.index for e in got.entries] == list(range(1, 11))


def test_the_hard_state_survives_compaction_under_never(tmp_path: Path) -> None:
    """Compaction deletes the older segments, leaving the hard state only in the
    open segment's header: under `never` too, that header is fsynced first."""
    st, cut = counted(tmp_path, "never", segment_size=256, keep_snapshots=1)
    st.save(HardState(1, "a"), [])
    for i in range(1, 40):
        st.save(None, entries(i, i))
    first = st.segments[0]
    cut.calls.clear()
    meta = SnapshotMeta(30, 1, {})
    assert st.adopt_snapshot(st.write_snapshot(meta, [b"applied 30"]))
    assert first not in st.segments  # compacted
    assert str(st.segments[-1]) in cut.calls
    st.close()
