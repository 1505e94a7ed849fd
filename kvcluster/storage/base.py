"""The storage boundary: what the node must persist before Raft may act on it.

The node calls `save()` with each ready batch's hard state and entries before
sending that batch's messages, `sync()` periodically, and `load()` once at
start. A write-ahead log implements the same calls with files; neither the core
nor the node knows which one it has.

Snapshots are byte streams (see stream.py) so that none has to be one object:
`write_snapshot()` encodes and fsyncs one in a worker thread while the loop
keeps saving, `adopt_snapshot()` then makes it current on the loop thread; a
leader sends `latest_snapshot().read(offset, n)` in chunks, a follower feeds
them to `open_receiver(meta).write()` and adopts what `finish()` verified.
`load()` hands the current one back as `PersistedState.source`.

Fail-stop: an I/O error (ENOSPC, EIO, EMFILE, a failed fsync...) is raised out
of the call as the OSError itself, never retried, and from then on every call
raises StorageFailed. After a failed fsync the kernel may have dropped the
dirty pages and marked them clean (PostgreSQL's "fsyncgate"), so a retry could
"succeed" with the data gone: the only safe move is to stop and recover from
what the disk really holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from ..raft import Entry, HardState

MAX_INT = (1 << 63) - 1  # indexes and terms fit a signed 64-bit field everywhere


class StorageError(Exception):
    """Base of the errors storage raises itself (I/O errors stay OSErrors)."""


class StorageFailed(StorageError):
    """An earlier I/O error poisoned this storage: nothing more may be done with it."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"an earlier write failed: {cause!r}")
        self.cause = cause


class FailStop:
    """Remembers the first I/O error and refuses everything after it.

    Used as `with fail_stop:` around each storage call: entering raises
    StorageFailed once an error is recorded; an OSError leaving the block is
    recorded and propagates unchanged. Shared by a storage and the snapshot
    sources and receivers it hands out, so an error in a worker thread stops
    the loop thread's next save too.
    """

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: OSError | None = None

    def check(self) -> None:
        if self.error is not None:
            raise StorageFailed(self.error)

    def fail(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc

    def __enter__(self) -> None:
        if self.error is not None:
            raise StorageFailed(self.error)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, OSError) and self.error is None:
            self.error = exc


class CorruptLogError(StorageError):
    """Stored data is damaged somewhere a crash cannot explain: recovery must stop.

    The message says where, and what an operator can do: the node never repairs
    it by itself, since whatever it dropped might have been acknowledged."""

    HINT = (
        "Recovery stops rather than drop data that may have been acknowledged: restore "
        "the data directory from a backup, or remove this member and add it back with an "
        "empty data directory so that it copies the log from the others"
    )

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(
            f"corrupt write-ahead log {path} at byte offset {offset}: {reason}. {self.HINT}"
        )
        self.path = path
        self.offset = offset
        self.reason = reason


class StorageIdentityError(StorageError):
    """The storage directory belongs to another node (or is not a storage directory)."""


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What a snapshot is of: the state as of `index` (whose entry had `term`) and
    the membership (`Membership.to_dict()`) in effect there."""

    index: int
    term: int
    membership: dict[str, Any] = field(default_factory=dict)


class SnapshotSource(Protocol):
    """One complete, verified snapshot, as bytes (a file, or bytes in memory).

    `read` serves a leader sending it in chunks, `payload` a node rebuilding
    its state machine (`KVStore.from_lines(source.payload())`). Both may run in
    any thread; a source stays readable after a newer snapshot replaced it.
    """

    @property
    def meta(self) -> SnapshotMeta: ...

    @property
    def size(self) -> int:
        """Bytes in the whole stream (what a receiver must get)."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `min(length, size - offset)` bytes from `offset`."""
        ...

    def payload(self) -> Iterator[bytes]:
        """The payload lines (without their newlines), in order."""
        ...

    def close(self) -> None:
        """Release the file (also done when the source is garbage collected)."""
        ...


class SnapshotReceiver(Protocol):
    """A snapshot arriving from a leader in chunks, written through as it comes."""

    @property
    def meta(self) -> SnapshotMeta:
        """As announced by the leader; the stream must carry the same."""
        ...

    @property
    def received(self) -> int:
        """Bytes written so far: the offset the next chunk must start at."""
        ...

    def write(self, data: bytes) -> None:
        """Append a chunk; ValueError as soon as the bytes cannot be the snapshot."""
        ...

    def finish(self) -> SnapshotSource:
        """Verify (size, structure, CRC) and make durable: ValueError if bad.

        Blocking (one fsync of the whole file): call it from a worker thread.
        """
        ...

    def abort(self) -> None:
        """Drop what was received (idempotent)."""
        ...


@dataclass(slots=True)
class PersistedState:
    """What `load()` returns: rebuild the state machine from the snapshot (if
    any), then hand the rest to the core.

    `source` is the current snapshot (rebuild with `KVStore.from_lines(
    source.payload())`), or None; `snapshot_index` and `snapshot_term` are its
    meta's (0 without one). `entries` all come after `snapshot_index`.
    `incarnation` is the identity the storage remembers (disk storage), or None
    if it remembers none (memory).
    """

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot_index: int = 0
    snapshot_term: int = 0
    incarnation: str | None = None
    source: SnapshotSource | None = None

    def __post_init__(self) -> None:
        if self.source is not None:
            s = self.source.meta
            if (self.snapshot_index, self.snapshot_term) not in ((0, 0), (s.index, s.term)):
                raise ValueError("snapshot_index/snapshot_term disagree with the snapshot")
            self.snapshot_index, self.snapshot_term = s.index, s.term
        if self.entries and self.entries[0].index != self.snapshot_index + 1:
            raise ValueError("entries must start right after the snapshot")

    @property
    def empty(self) -> bool:
        return self.hard_state == HardState() and not self.entries and not self.snapshot_index


class Storage(Protocol):
    def load(self) -> PersistedState:
        """The persisted state (snapshot, hard state, entries after the snapshot)."""
        ...

    def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        """Persist before returning: a changed hard state (term, vote) durably
        under every fsync policy, since the node sends the vote or acknowledgement
        that depends on it next; entries as far as the policy promises.

        `entries` are contiguous; if the first index is <= the last stored one,
        the stored suffix from there is replaced (a new leader overwrote it).
        """
        ...

    def write_snapshot(self, meta: SnapshotMeta, lines: Iterable[bytes]) -> SnapshotSource:
        """Write a snapshot of newline-free `lines` durably; it is not current yet.

        BLOCKING, and safe in a worker thread while the loop thread keeps calling
        `save()`: it touches only its own file in the snapshot area. Hand the
        result to `adopt_snapshot` on the loop thread.
        """
        ...

    def adopt_snapshot(self, source: SnapshotSource) -> bool:
        """Make a written or received snapshot THE snapshot (on the loop thread)
        and drop the entries it covers.

        Entries after it survive only if the stored entry at `source.meta.index`
        has `source.meta.term` (Raft's InstallSnapshot rule); otherwise the log
        restarts after the snapshot. A snapshot not newer than the current one is
        dropped and False returned. Only sources this storage produced are
        accepted.
        """
        ...

    def open_receiver(self, meta: SnapshotMeta, size: int | None = None) -> SnapshotReceiver:
        """Start receiving a leader's snapshot (`size`: the total it announced)."""
        ...

    def latest_snapshot(self) -> SnapshotSource | None:
        """The current snapshot: what recovery found, or the last one adopted."""
        ...

    def sync(self) -> None:
        """Make everything saved so far durable (a no-op unless the policy defers fsyncs)."""
        ...

    @property
    def sync_interval(self) -> float | None:
        """Seconds between the `sync()` calls the node owes, or None if it owes none."""
        ...

    def close(self) -> None: ...
