"""Durable storage: a write-ahead log plus snapshots in one directory per node.

    <dir>/meta.json          name and incarnation, written once at first start
    <dir>/wal/<seq>.wal      append-only segments (see wal.py)
    <dir>/snap/*.snap        the newest `keep_snapshots` snapshots (see snapshots.py)

Recovery loads the newest readable snapshot and replays every kept segment in
order. Replay needs no other state because each segment starts with the hard
state of its time and each snapshot leaves a marker record in the log:
  - HARD_STATE replaces (term, vote);
  - an ENTRY at or before the current end cuts the suffix first (a new leader
    overwrote it); one at or before the snapshot index cuts everything after
    the snapshot (that suffix was overwritten too);
  - a SNAPSHOT marker whose log disagreed with it (keep=False) drops every entry
    before it: the log restarted after that snapshot.
Compaction deletes the oldest segments once every entry in them is covered by
the oldest kept snapshot and they precede that snapshot's marker, so the other
kept snapshot remains a complete fallback if the newest file is damaged.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..raft import Entry, HardState
from .base import CorruptLogError, PersistedState, Snapshot, StorageIdentityError
from .snapshots import SnapshotStore
from .terms import TermRuns, check_batch
from .wal import (
    FSYNC_POLICIES,
    FsyncPolicy,
    SegmentWriter,
    SnapshotMark,
    encode_entry,
    encode_hard_state,
    encode_mark,
    fsync_dir,
    list_segments,
    read_segment,
    truncate,
)

META = "meta.json"


@dataclass(slots=True)
class _Recovered:
    state: PersistedState
    segment_max: dict[int, int]  # segment seq -> highest entry index in it (0: none)
    missing_mark: SnapshotMark | None  # the snapshot's marker never made it to the log


class DiskStorage:
    """The Storage protocol on files, with a configurable fsync policy.

    fsync: `always` (each save is fsynced before it returns: one fsync per
    batch), `batch` (at most one fsync per `sync_interval`; the node calls
    `sync()` that often), `never` (the page cache only: survives a killed
    process, not a crashed machine). Segments rotate at `segment_size` bytes.

    `name` must match the one stored at first start (a directory belongs to one
    node); `incarnation` is only used at first start: afterwards the stored one
    wins, so a node restarted on its disk rejoins as its old self.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        incarnation: str = "",
        fsync: FsyncPolicy = "always",
        sync_interval: float = 0.05,
        segment_size: int = 16 << 20,
        keep_snapshots: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}, not {fsync!r}")
        if keep_snapshots < 1:
            raise ValueError("keep_snapshots must be at least 1")
        self.path = Path(path)
        self.fsync = fsync
        self.keep_snapshots = keep_snapshots
        durable = fsync != "never"
        self.path.mkdir(parents=True, exist_ok=True)
        self._wal_dir = self.path / "wal"
        self.name, self.incarnation = _identity(self.path, name, incarnation, durable=durable)
        self._wal_dir.mkdir(exist_ok=True)
        self._snaps = SnapshotStore(self.path / "snap", durable=durable)
        self._snaps.remove_temporaries()

        rec = self._replay(repair=True)
        st = rec.state
        self._hard_state = st.hard_state
        self._terms = TermRuns(st.snapshot_index, st.snapshot_term)
        for e in st.entries:
            self._terms.append(e.index, e.term)
        self._segment_max = rec.segment_max
        self._repair_mark = rec.missing_mark
        segments = list_segments(self._wal_dir)
        # Always a fresh segment: we never append after a tail we had to cut.
        self._writer = SegmentWriter(
            self._wal_dir,
            segments[-1][0] + 1 if segments else 1,
            policy=fsync,
            interval=sync_interval,
            segment_size=segment_size,
            clock=clock,
            header=self._segment_header,
        )
        self._loaded: PersistedState | None = st

    # ------------------------------------------------------------ the Storage protocol

    def load(self) -> PersistedState:
        if self._loaded is not None:  # recovery already read it all
            st, self._loaded = self._loaded, None
            return st
        return self._replay(repair=False).state

    def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        check_batch(entries, self._terms.last_index)
        self._loaded = None
        parts = [encode_entry(e) for e in entries]
        if hard_state is not None:
            parts.insert(0, encode_hard_state(hard_state))
        if not parts:
            return
        self._writer.rotate_if_full()
        self._writer.append(b"".join(parts))
        if hard_state is not None:
            self._hard_state = hard_state
        if entries:
            for e in entries:
                self._terms.append(e.index, e.term)
            seq = self._writer.seq
            self._segment_max[seq] = max(self._segment_max.get(seq, 0), entries[-1].index)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        terms = self._terms
        if snapshot.index <= terms.base_index:
            return
        self._loaded = None
        keep = terms.term_at(snapshot.index) == snapshot.term
        self._writer.rotate_if_full()  # so the marker lands in the segment the name records
        self._snaps.write(snapshot, keep=keep, wal_seq=self._writer.seq)
        self._writer.append(encode_mark(SnapshotMark(snapshot.index, snapshot.term, keep)))
        terms.compact(snapshot.index, snapshot.term, keep)
        self._compact()

    def sync(self) -> None:
        self._writer.sync()

    @property
    def sync_interval(self) -> float | None:
        """How often the node must call `sync()`: only the `batch` policy defers fsyncs."""
        return self._writer.interval if self.fsync == "batch" else None

    def close(self) -> None:
        self._writer.close()

    # ------------------------------------------------------------ introspection

    @property
    def segments(self) -> list[Path]:
        return [p for _, p in list_segments(self._wal_dir)]

    @property
    def snapshot_files(self) -> list[Path]:
        return [f.path for f in self._snaps.files()]

    # ------------------------------------------------------------ internals

    def _segment_header(self) -> bytes:
        """What starts every segment: the hard state (so deleting older segments
        never loses it) and, once after recovery, a snapshot marker that a crash
        kept out of the log."""
        head = b""
        if self._hard_state != HardState():
            head += encode_hard_state(self._hard_state)
        if self._repair_mark is not None:
            head += encode_mark(self._repair_mark)
            self._repair_mark = None
        return head

    def _compact(self) -> None:
        kept = self._snaps.retain(self.keep_snapshots)
        if not kept:
            return
        oldest = kept[-1]
        limit = min(oldest.wal_seq, self._writer.seq)
        doomed = []
        for seq, path in list_segments(self._wal_dir):
            if seq >= limit or self._segment_max.get(seq, 0) > oldest.index:
                break  # only a prefix: a later segment may depend on an earlier one's cut
            doomed.append((seq, path))
        if doomed:
            # The hard state survives only in the open segment's header once the
            # older segments are gone: make it durable first.
            self._writer.sync()
        for seq, path in doomed:
            path.unlink()
            self._segment_max.pop(seq, None)

    def _replay(self, *, repair: bool) -> _Recovered:
        found = self._snaps.load_newest(repair=repair)
        snap, keep = (found[1], found[2]) if found else (None, True)
        base = snap.index if snap else 0
        hard_state = HardState()
        entries: list[Entry] = []
        segment_max: dict[int, int] = {}
        own_mark = snap is None
        segments = list_segments(self._wal_dir)
        for i, (seq, path) in enumerate(segments):
            records, torn = read_segment(path, last=i == len(segments) - 1, skip_data_upto=base)
            if torn is not None and repair:
                truncate(path, torn, durable=self.fsync != "never")
            top = 0
            for off, r in records:
                if isinstance(r, HardState):
                    hard_state = r
                elif isinstance(r, Entry):
                    top = max(top, r.index)
                    pos = r.index - base - 1
                    if pos > len(entries):
                        raise CorruptLogError(
                            str(path), off, f"entry {r.index} follows {base + len(entries)}: a gap"
                        )
                    del entries[max(pos, 0) :]
                    if pos >= 0:
                        entries.append(r)
                elif r.index > base:
                    # A newer snapshot was written but is unreadable. If its log kept the
                    # entries, our older snapshot plus the log still hold everything.
                    if not r.keep:
                        raise CorruptLogError(
                            str(path), off, f"the log restarts at snapshot {r.index}, now lost"
                        )
                else:
                    own_mark = own_mark or r.index == base
                    if not r.keep:
                        entries.clear()
            segment_max[seq] = top
        missing = None
        if snap is not None and not own_mark:
            # Crashed between writing the snapshot and its marker: nothing was saved
            # after it, so applying the marker at the end is exact.
            if not keep:
                entries.clear()
            missing = SnapshotMark(snap.index, snap.term, keep)
        state = PersistedState(hard_state, entries, snapshot=snap, incarnation=self.incarnation)
        return _Recovered(state, segment_max, missing)


def _identity(path: Path, name: str, incarnation: str, *, durable: bool) -> tuple[str, str]:
    """The (name, incarnation) this directory belongs to, recorded at first start."""
    meta = path / META
    if meta.exists():
        try:
            d = json.loads(meta.read_text("utf-8"))
            stored = (str(d["name"]), str(d["incarnation"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageIdentityError(f"{meta} is unreadable: {exc}") from exc
        if stored[0] != name:
            raise StorageIdentityError(
                f"{path} holds the state of node {stored[0]!r}, not {name!r}"
            )
        return stored
    if any((path / "wal").glob("*.wal")) or any((path / "snap").glob("*.snap")):
        raise StorageIdentityError(f"{path} holds a log but no {META}: whose is it?")
    tmp = path / (META + ".tmp")
    tmp.write_text(json.dumps({"name": name, "incarnation": incarnation}), "utf-8")
    if durable:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, meta)
    if durable:
        fsync_dir(path)
    return name, incarnation
