"""Snapshot files: snapshot streams (stream.py) written whole or not at all.

    snap/<index>-<term>-<n>.tmp       being written by write_snapshot (a worker thread)
    snap/<index>-<term>-<n>.part      being received from a leader
    snap/<index>-<term>-<wal seq>-<keep>.snap    adopted: a snapshot recovery may use

A snapshot is written to `.tmp` (or received into `.part`) and fsynced; only
adopting renames it to `.snap` and fsyncs the directory, so a crash leaves
either the old set of snapshots or the new one plus, at worst, a `.tmp` or
`.part` file that recovery removes (an unadopted snapshot is simply taken or
sent again). That is also why write_snapshot does not fsync the directory: the
name that must survive a crash is the one adopting gives.

The `.snap` name carries what recovery and compaction need without reading the
file: `wal seq` is the segment that holds (or will hold) the snapshot's marker
record, which compaction must never delete while the snapshot is kept, and
`keep` (1/0) whether the log entries after it were kept, for a crash between
the rename and the marker. Neither can live inside the file: its bytes are
fixed when it is written (or come from the leader) and covered by its CRC.

A source keeps its file open, so a leader can go on sending a snapshot that
compaction has meanwhile deleted.
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .base import FailStop, SnapshotMeta, StorageError
from .stream import (
    READ_BLOCK,
    TRAILER_LEN,
    OldPayloadError,
    Verifier,
    check_range,
    encode_stream,
    iter_lines,
)
from .wal import fsync_dir

log = logging.getLogger("kvcluster.storage")

WRITE_BUFFER = 1 << 20


@dataclass(frozen=True, slots=True, order=True)
class SnapshotFile:
    index: int
    term: int
    wal_seq: int
    keep: bool
    path: Path

    @classmethod
    def parse(cls, path: Path) -> SnapshotFile | None:
        parts = path.stem.split("-")
        if path.suffix != ".snap" or len(parts) != 4 or not all(p.isdigit() for p in parts):
            return None
        if parts[3] not in ("0", "1"):
            return None
        return cls(int(parts[0]), int(parts[1]), int(parts[2]), parts[3] == "1", path)

    @staticmethod
    def name(index: int, term: int, wal_seq: int, keep: bool) -> str:
        return f"{index:020d}-{term:020d}-{wal_seq:016d}-{int(keep)}.snap"


def _old_format(path: Path) -> StorageError:
    return StorageError(
        f"{path} is a snapshot in an older format this version cannot read;"
        " start this node from an empty directory"
    )


def _pread_exact(fd: int, offset: int, length: int) -> bytes:
    parts = []
    while length > 0:
        b = os.pread(fd, length, offset)
        if not b:
            break  # the caller checked the range: only a file shrunk under us gets here
        parts.append(b)
        offset += len(b)
        length -= len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class FileSnapshot:
    """A verified snapshot file, read through its own descriptor (pread: any thread)."""

    def __init__(
        self,
        path: Path,
        fd: int,
        meta: SnapshotMeta,
        size: int,
        payload_start: int,
        store: SnapshotStore,
    ) -> None:
        self.path = path
        self.meta = meta
        self.size = size
        self.payload_start = payload_start
        self.store = store  # only this store's storage may adopt it
        self.adopted = False
        self._fd = fd
        self._close = weakref.finalize(self, os.close, fd)

    def read(self, offset: int, length: int) -> bytes:
        check_range(offset, length, self.size)
        with self.store.fail_stop:
            return _pread_exact(self._fd, offset, min(length, self.size - offset))

    def payload(self) -> Iterator[bytes]:
        return iter_lines(self.read, self.payload_start, self.size - TRAILER_LEN)

    def close(self) -> None:
        self._close()

    def __repr__(self) -> str:
        return f"FileSnapshot({self.path.name}, {self.meta.index}/{self.meta.term}, {self.size} B)"


class FileReceiver:
    """A leader's snapshot arriving in chunks, written straight to a `.part` file.

    Memory stays bounded (the verifier keeps the meta line and a few bytes);
    `received` is the offset to resume from if the transfer is interrupted.
    """

    def __init__(self, store: SnapshotStore, meta: SnapshotMeta, size: int | None) -> None:
        self.store = store
        self.meta = meta
        self.path = store.directory / store.unique_name(meta, "part")
        self._verifier = Verifier(meta, size)
        with store.fail_stop:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._done = False

    @property
    def received(self) -> int:
        return self._verifier.received

    def write(self, data: bytes) -> None:
        if self._done:
            raise ValueError("the receiver is finished or aborted")
        with self.store.fail_stop:
            self._verifier.feed(data)  # ValueError before any byte of it is written
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]

    def finish(self) -> FileSnapshot:
        if self._done:
            raise ValueError("the receiver is finished or aborted")
        try:
            meta = self._verifier.finish()
        except ValueError:
            self.abort()
            raise
        with self.store.fail_stop:
            if self.store.durable:
                self.store.fsync(self._fd)
            self._done = True
            src = FileSnapshot(
                self.path,
                self._fd,
                meta,
                self._verifier.received,
                self._verifier.payload_start,
                self.store,
            )
        return src

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with self.store.fail_stop:
            os.close(self._fd)
            self.path.unlink(missing_ok=True)


class SnapshotStore:
    def __init__(
        self,
        directory: Path,
        *,
        durable: bool,
        fsync: Callable[[int], None],
        fail_stop: FailStop,
    ) -> None:
        self.directory = directory
        self.durable = durable
        self.fsync = fsync
        self.fail_stop = fail_stop
        self._seq = itertools.count(1)
        directory.mkdir(parents=True, exist_ok=True)

    def files(self) -> list[SnapshotFile]:
        """Adopted snapshot files, newest first."""
        found = (SnapshotFile.parse(p) for p in self.directory.glob("*.snap"))
        return sorted((f for f in found if f is not None), reverse=True)

    def refuse_old_format(self) -> None:
        """Snapshots of the one-document format (KVSNAP01, named index-term-seq)
        cannot be read here; skipping them would lose the log they compacted."""
        old = [p for p in self.directory.glob("*.snap") if SnapshotFile.parse(p) is None]
        if old:
            raise _old_format(old[0])

    def remove_temporaries(self) -> None:
        for pattern in ("*.tmp", "*.part"):
            for p in self.directory.glob(pattern):
                log.info("removing unfinished snapshot %s", p)
                p.unlink()

    def unique_name(self, meta: SnapshotMeta, suffix: str) -> str:
        return f"{meta.index:020d}-{meta.term:020d}-{next(self._seq)}.{suffix}"

    # ------------------------------------------------------------ writing

    def write(self, meta: SnapshotMeta, lines: Iterable[bytes]) -> FileSnapshot:
        """Write and fsync `<...>.tmp` (blocking; safe in a worker thread)."""
        with self.fail_stop:
            path = self.directory / self.unique_name(meta, "tmp")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                with open(fd, "wb", buffering=WRITE_BUFFER, closefd=False) as f:
                    size, start = encode_stream(meta, lines, f.write)
                if self.durable:
                    self.fsync(fd)
            except BaseException as e:
                os.close(fd)
                if not isinstance(e, OSError):  # a bad line: not the disk's fault
                    path.unlink(missing_ok=True)
                raise
            return FileSnapshot(path, fd, meta, size, start, self)

    def receiver(self, meta: SnapshotMeta, size: int | None) -> FileReceiver:
        return FileReceiver(self, meta, size)

    def install(self, src: FileSnapshot, *, wal_seq: int, keep: bool) -> SnapshotFile:
        """Rename a written or received file to its `.snap` name, durably."""
        path = self.directory / SnapshotFile.name(src.meta.index, src.meta.term, wal_seq, keep)
        os.replace(src.path, path)
        src.path, src.adopted = path, True
        if self.durable:
            fsync_dir(self.directory, self.fsync)
        return SnapshotFile(src.meta.index, src.meta.term, wal_seq, keep, path)

    def discard(self, src: FileSnapshot) -> None:
        """Remove a written or received file that will never be adopted."""
        src.path.unlink(missing_ok=True)

    # ------------------------------------------------------------ reading

    def open(self, f: SnapshotFile) -> FileSnapshot:
        """Open and verify a `.snap` file; ValueError if its bytes are damaged."""
        fd = os.open(f.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            v = Verifier()
            for off in range(0, size, READ_BLOCK):
                v.feed(_pread_exact(fd, off, min(READ_BLOCK, size - off)))
            meta = v.finish()
            if (meta.index, meta.term) != (f.index, f.term):
                raise ValueError("index/term disagree with the file name")
        except BaseException:
            os.close(fd)
            raise
        src = FileSnapshot(f.path, fd, meta, size, v.payload_start, self)
        src.adopted = True  # it is a `.snap` already: never to be renamed or discarded
        return src

    def load_newest(self, *, repair: bool) -> tuple[SnapshotFile, FileSnapshot] | None:
        """The newest sound snapshot. A damaged one is skipped with a warning (and,
        when repairing, renamed `*.corrupt` so it is never picked again); recovery
        then falls back to an older one, whose log is still kept. An I/O error is
        not damage: it propagates rather than condemn a file that may be fine. Nor
        is a sound file of a payload no longer read (the one-document "json"):
        StorageError, as for `refuse_old_format`."""
        for f in self.files():
            try:
                src = self.open(f)
            except OldPayloadError as exc:
                raise _old_format(f.path) from exc
            except ValueError as exc:
                log.warning("snapshot %s is unreadable (%s); trying an older one", f.path, exc)
                if repair:
                    f.path.rename(f.path.with_name(f.path.name + ".corrupt"))
                continue
            return f, src
        return None

    def retain(self, count: int) -> list[SnapshotFile]:
        """Delete all but the newest `count` snapshots; return the kept ones."""
        files = self.files()
        for f in files[count:]:
            f.path.unlink()
        return files[:count]
