"""A storage that fails like a disk does, for fail-stop tests (simulator and real nodes).

    FailingStorage(MemoryStorage(), fail_on=("save", 3))
    FailingStorage(DiskStorage(path, name="n1"), fail_on=("fsync", 10))

The Nth call of the chosen kind raises OSError, and from then on the wrapper
(and a DiskStorage inside it) refuses every call with StorageFailed, as a real
storage does after an I/O error. What the inner storage holds afterwards is
"what the disk holds": restart a node from the inner storage (or its directory)
to test recovery.

- ("save", n): the Nth `save()` raises ENOSPC before writing anything.
- ("fsync", n): on a storage with an `fsync_fn` (DiskStorage) the Nth fsync it
  makes (WAL segment, snapshot file or directory) raises EIO after the data
  reached the page cache, so it may or may not be on disk at restart. On one
  without (MemoryStorage) the Nth call that would fsync (a `save()` that writes
  something, `adopt_snapshot`) takes effect and then raises EIO: the same
  "maybe persisted" outcome.
- ("snapshot", n): the Nth of `write_snapshot`, `open_receiver` fails with
  ENOSPC (a receiver on its first `write`), writing nothing.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..raft import Entry, HardState
from .base import (
    FailStop,
    PersistedState,
    SnapshotMeta,
    SnapshotReceiver,
    SnapshotSource,
    Storage,
)
from .wal import os_fsync

FAULT_KINDS = ("save", "fsync", "snapshot")
_DEFAULT_ERRNO = {"save": errno.ENOSPC, "fsync": errno.EIO, "snapshot": errno.ENOSPC}


class FailingStorage:
    """Wraps any Storage; fails the Nth call of one kind (see the module docstring)."""

    def __init__(
        self, inner: Storage, fail_on: tuple[str, int], *, error: int | None = None
    ) -> None:
        kind, n = fail_on
        if kind not in FAULT_KINDS or n < 1:
            raise ValueError(f"fail_on must be (one of {FAULT_KINDS}, N >= 1), not {fail_on!r}")
        self.inner = inner
        self.kind, self.n = kind, n
        self.errno = _DEFAULT_ERRNO[kind] if error is None else error
        self.calls = 0  # calls of `kind` so far
        self._lock = threading.Lock()  # snapshots are written from worker threads
        self._fail_stop = FailStop()
        self._disk_fsync = kind == "fsync" and hasattr(inner, "fsync_fn")
        if self._disk_fsync:
            real: Callable[[int], None] | None = inner.fsync_fn  # type: ignore[attr-defined]

            def failing_fsync(fd: int) -> None:
                if self._due("fsync"):
                    self._raise()
                (real or os_fsync)(fd)

            inner.fsync_fn = failing_fsync  # type: ignore[attr-defined]

    @property
    def failed(self) -> OSError | None:
        return self._fail_stop.error

    def _due(self, kind: str) -> bool:
        with self._lock:
            if kind != self.kind or self._fail_stop.error is not None:
                return False
            self.calls += 1
            return self.calls == self.n

    def _raise(self) -> None:
        err = OSError(self.errno, f"{os.strerror(self.errno)} (injected: {self.kind} #{self.n})")
        self._fail_stop.fail(err)
        inner_stop = getattr(self.inner, "_fail_stop", None)
        if isinstance(inner_stop, FailStop):
            inner_stop.fail(err)  # the inner storage is just as dead
        raise err

    def _memory_fsync(self) -> None:
        if not self._disk_fsync and self._due("fsync"):
            self._raise()

    # ------------------------------------------------------------ Storage

    def load(self) -> PersistedState:
        with self._fail_stop:
            return self.inner.load()

    def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        with self._fail_stop:
            if self._due("save"):
                self._raise()
            self.inner.save(hard_state, entries)
            if hard_state is not None or entries:
                self._memory_fsync()

    def write_snapshot(self, meta: SnapshotMeta, lines: Iterable[bytes]) -> SnapshotSource:
        with self._fail_stop:
            if self._due("snapshot"):
                self._raise()
            return self.inner.write_snapshot(meta, lines)

    def adopt_snapshot(self, source: SnapshotSource) -> bool:
        with self._fail_stop:
            adopted = self.inner.adopt_snapshot(source)
            self._memory_fsync()
            return adopted

    def open_receiver(self, meta: SnapshotMeta, size: int | None = None) -> SnapshotReceiver:
        with self._fail_stop:
            doomed = self._due("snapshot")
            return _Receiver(self, self.inner.open_receiver(meta, size), doomed)

    def latest_snapshot(self) -> SnapshotSource | None:
        with self._fail_stop:
            return self.inner.latest_snapshot()

    def sync(self) -> None:
        with self._fail_stop:
            self.inner.sync()

    @property
    def sync_interval(self) -> float | None:
        return self.inner.sync_interval

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # introspection: segments, snapshot_files, path...


class _Receiver:
    """A receiver whose first write fails when its storage's turn came."""

    def __init__(self, owner: FailingStorage, inner: SnapshotReceiver, doomed: bool) -> None:
        self._owner, self._inner, self._doomed = owner, inner, doomed

    @property
    def meta(self) -> SnapshotMeta:
        return self._inner.meta

    @property
    def received(self) -> int:
        return self._inner.received

    def write(self, data: bytes) -> None:
        with self._owner._fail_stop:
            if self._doomed:
                self._owner._raise()
            self._inner.write(data)

    def finish(self) -> SnapshotSource:
        with self._owner._fail_stop:
            return self._inner.finish()

    def abort(self) -> None:
        self._inner.abort()
