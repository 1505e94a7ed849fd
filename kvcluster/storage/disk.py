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

Snapshots (snapshots.py) are written by `write_snapshot` in a worker thread,
which touches only its own `.tmp` file; `adopt_snapshot` (loop thread) renames
it, writes the marker and compacts. Received snapshots go the same way from a
`.part` file.

Fail-stop: every public call runs under one FailStop (base.py). The first
OSError propagates unchanged and every later call raises StorageFailed; `close`
then only releases descriptors (no sync: that would be the retried fsync).
What a failed save leaves on disk: any prefix of its records, possibly ending
in a torn or zeroed one, in the last segment, and nothing after it (no later
call writes). Recovery keeps the whole records and truncates the rest, as after
a crash mid-write, which is safe because the node acted on none of them: it
stops on the error, before sending or acknowledging anything that depended on
the save. Nothing can be appended behind a torn record, since a restarted
storage always opens a fresh segment after cutting the torn tail.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..raft import Entry, HardState
from .base import (
    CorruptLogError,
    FailStop,
    PersistedState,
    SnapshotMeta,
    SnapshotSource,
    StorageIdentityError,
)
from .snapshots import FileReceiver, FileSnapshot, SnapshotStore
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
    os_fsync,
    read_segment,
    truncate,
)

META = "meta.json"


@dataclass(slots=True)
class _Recovered:
    state: PersistedState
    source: FileSnapshot | None
    segment_max: dict[int, int]  # segment seq -> highest entry index in it (0: none)
    missing_mark: SnapshotMark | None  # the snapshot's marker never made it to the log


class DiskStorage:
    """The Storage protocol on files, with a configurable fsync policy.

    fsync: `always` (each save is fsynced before it returns: one fsync per
    batch), `batch` (at most one fsync per `sync_interval`; the node calls
    `sync()` that often), `never` (the page cache only: survives a killed
    process, not a crashed machine). The policy is for entries only: a save
    that changes the term or the vote is fsynced before it returns under every
    policy, because the node sends that vote or acknowledgement next, and a
    node that forgot it after a machine crash could vote twice in one term.
    That costs one fsync per election or term change. The directories and the
    identity file are made durable at first start under every policy too (a
    durable hard state in a directory that could vanish would not be).
    Segments rotate at `segment_size` bytes.

    `name` must match the one stored at first start (a directory belongs to one
    node); `incarnation` is only used at first start: afterwards the stored one
    wins, so a node restarted on its disk rejoins as its old self.

    `fsync_fn` performs every fsync (segments, snapshot files, directories);
    None means os.fsync. Replaceable on a live storage (`storage.fsync_fn =
    ...`), which is how FailingStorage fails the Nth one.
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
        fsync_fn: Callable[[int], None] | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}, not {fsync!r}")
        if keep_snapshots < 1:
            raise ValueError("keep_snapshots must be at least 1")
        self.path = Path(path)
        self.fsync = fsync
        self.fsync_fn = fsync_fn
        self.on_wal_fsync: Callable[[float], None] | None = None  # seconds per WAL fsync
        self.keep_snapshots = keep_snapshots
        self._fail_stop = FailStop()
        durable = fsync != "never"
        _make_dir(self.path, self._fsync)
        self._wal_dir = self.path / "wal"
        self.name, self.incarnation = _identity(self.path, name, incarnation, self._fsync)
        _make_dir(self._wal_dir, self._fsync)
        self._snaps = SnapshotStore(
            self.path / "snap", durable=durable, fsync=self._fsync, fail_stop=self._fail_stop
        )
        self._snaps.refuse_old_format()
        self._snaps.remove_temporaries()

        rec = self._replay(repair=True)
        st = rec.state
        self._latest: FileSnapshot | None = rec.source
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
            fsync=self._wal_fsync,
        )
        self._loaded: PersistedState | None = st

    def _fsync(self, fd: int) -> None:
        (self.fsync_fn or os_fsync)(fd)

    def _wal_fsync(self, fd: int) -> None:
        """The WAL's fsyncs, timed for the node's metrics when it asks (on_wal_fsync)."""
        observe = self.on_wal_fsync
        if observe is None:
            return self._fsync(fd)
        started = time.perf_counter()
        self._fsync(fd)
        observe(time.perf_counter() - started)
        return None

    # ------------------------------------------------------------ the Storage protocol

    def load(self) -> PersistedState:
        with self._fail_stop:
            if self._loaded is not None:  # recovery already read it all
                st, self._loaded = self._loaded, None
                return st
            return self._replay(repair=False).state

    def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        """Entries are as durable as the policy makes them; a new term or vote is
        on disk before this returns, whatever the policy (see the class docstring)."""
        with self._fail_stop:
            check_batch(entries, self._terms.last_index)
            self._loaded = None
            parts = [encode_entry(e) for e in entries]
            if hard_state is not None:
                parts.insert(0, encode_hard_state(hard_state))
            if not parts:
                return
            self._writer.rotate_if_full()
            changed = hard_state is not None and hard_state != self._hard_state
            self._writer.append(b"".join(parts), durable=changed)
            if hard_state is not None:
                self._hard_state = hard_state
            if entries:
                for e in entries:
                    self._terms.append(e.index, e.term)
                seq = self._writer.seq
                self._segment_max[seq] = max(self._segment_max.get(seq, 0), entries[-1].index)

    def write_snapshot(self, meta: SnapshotMeta, lines: Iterable[bytes]) -> FileSnapshot:
        """Write `<index>-<term>-<n>.tmp` and fsync it. Thread-safe against the
        loop's `save()`: it shares nothing with the log but the fail-stop flag."""
        return self._snaps.write(meta, lines)

    def open_receiver(self, meta: SnapshotMeta, size: int | None = None) -> FileReceiver:
        self._fail_stop.check()
        return self._snaps.receiver(meta, size)

    def adopt_snapshot(self, source: SnapshotSource) -> bool:
        with self._fail_stop:
            if not isinstance(source, FileSnapshot) or source.store is not self._snaps:
                raise ValueError("only a snapshot this storage wrote or received can be adopted")
            if source.adopted:
                raise ValueError(f"{source} was adopted already")
            if source.meta.index <= self._terms.base_index:
                self._snaps.discard(source)
                return False
            self._adopt(source)
            return True

    def latest_snapshot(self) -> FileSnapshot | None:
        self._fail_stop.check()
        return self._latest

    def sync(self) -> None:
        with self._fail_stop:
            self._writer.sync()

    @property
    def sync_interval(self) -> float | None:
        """How often the node must call `sync()`: only the `batch` policy defers fsyncs."""
        return self._writer.interval if self.fsync == "batch" else None

    def close(self) -> None:
        """Sync and close; after a failure only release the descriptors."""
        if self._fail_stop.error is not None:
            self._writer.abandon()
            return
        with self._fail_stop:
            self._writer.close()

    @property
    def failed(self) -> OSError | None:
        """The I/O error that stopped this storage, if one did."""
        return self._fail_stop.error

    # ------------------------------------------------------------ introspection

    @property
    def segments(self) -> list[Path]:
        return [p for _, p in list_segments(self._wal_dir)]

    @property
    def snapshot_files(self) -> list[Path]:
        return [f.path for f in self._snaps.files()]

    # ------------------------------------------------------------ internals

    def _adopt(self, src: FileSnapshot) -> None:
        """Rename into place (durably), then log the marker, then compact: a crash
        between the first two is repaired at recovery from the name's `keep`."""
        index, term = src.meta.index, src.meta.term
        self._loaded = None
        terms = self._terms
        keep = terms.term_at(index) == term
        self._writer.rotate_if_full()  # so the marker lands in the segment the name records
        self._snaps.install(src, wal_seq=self._writer.seq, keep=keep)
        self._writer.append(encode_mark(SnapshotMark(index, term, keep)))
        terms.compact(index, term, keep)
        self._latest = src
        self._compact()

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
            # older segments are gone: make it durable first, whatever the policy.
            self._writer.sync(force=True)
        for seq, path in doomed:
            path.unlink()
            self._segment_max.pop(seq, None)

    def _replay(self, *, repair: bool) -> _Recovered:
        found = self._snaps.load_newest(repair=repair)
        source = found[1] if found else None
        snap = source.meta if source else None
        keep = found[0].keep if found else True
        base = snap.index if snap else 0
        hard_state = HardState()
        entries: list[Entry] = []
        segment_max: dict[int, int] = {}
        own_mark = snap is None
        segments = list_segments(self._wal_dir)
        for i, (seq, path) in enumerate(segments):
            records, torn = read_segment(path, last=i == len(segments) - 1, skip_data_upto=base)
            if torn is not None and repair:
                truncate(path, torn, durable=self.fsync != "never", fsync=self._fsync)
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
                    if base + len(entries) < r.index:
                        # ... unless compaction removed them: then what it covered is gone.
                        raise CorruptLogError(
                            str(path),
                            off,
                            f"snapshot {r.index} is unreadable and the log holds entries only "
                            f"up to {base + len(entries)}: committed entries would be lost",
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
        state = PersistedState(hard_state, entries, incarnation=self.incarnation, source=source)
        return _Recovered(state, source, segment_max, missing)


def _make_dir(path: Path, fsync: Callable[[int], None]) -> None:
    """Create `path` (and missing parents) so that it survives a machine crash:
    each new directory's name is fsynced in its parent. Once, at first start."""
    if path.is_dir():
        return
    _make_dir(path.parent, fsync)
    path.mkdir(exist_ok=True)
    fsync_dir(path.parent, fsync)


def _identity(
    path: Path, name: str, incarnation: str, fsync: Callable[[int], None]
) -> tuple[str, str]:
    """The (name, incarnation) this directory belongs to, recorded (durably,
    whatever the fsync policy) at first start."""
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
    with open(tmp, "rb") as f:
        fsync(f.fileno())
    os.replace(tmp, meta)
    fsync_dir(path, fsync)
    return name, incarnation
