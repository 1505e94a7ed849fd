"""Snapshot files: written whole or not at all, and checked when read.

A snapshot is written to `<name>.tmp`, fsynced, renamed into place and the
directory fsynced, so a crash leaves either the old set of snapshots or the
new one plus, at worst, a torn temporary file (ignored and removed).

File: magic `KVSNAP01` | length:u32 | crc32:u32 | JSON body. The name
`<index>-<term>-<wal seq>.snap` carries what compaction needs without reading
the file: `wal seq` is the segment that holds (or will hold) the snapshot's
marker record, which compaction must never delete while the snapshot is kept.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from .base import Snapshot
from .wal import fsync_dir

log = logging.getLogger("kvcluster.storage")

MAGIC = b"KVSNAP01"
_HEAD = struct.Struct("<8sII")


@dataclass(frozen=True, slots=True, order=True)
class SnapshotFile:
    index: int
    term: int
    wal_seq: int
    path: Path

    @classmethod
    def parse(cls, path: Path) -> SnapshotFile | None:
        parts = path.stem.split("-")
        if path.suffix != ".snap" or len(parts) != 3 or not all(p.isdigit() for p in parts):
            return None
        return cls(int(parts[0]), int(parts[1]), int(parts[2]), path)


class SnapshotStore:
    def __init__(self, directory: Path, *, durable: bool) -> None:
        self.directory = directory
        self.durable = durable
        directory.mkdir(parents=True, exist_ok=True)

    def files(self) -> list[SnapshotFile]:
        """Snapshot files, newest first."""
        found = (SnapshotFile.parse(p) for p in self.directory.glob("*.snap"))
        return sorted((f for f in found if f is not None), reverse=True)

    def remove_temporaries(self) -> None:
        for p in self.directory.glob("*.tmp"):
            log.info("removing unfinished snapshot %s", p)
            p.unlink()

    def write(self, snapshot: Snapshot, *, keep: bool, wal_seq: int) -> SnapshotFile:
        body = json.dumps(
            {
                "index": snapshot.index,
                "term": snapshot.term,
                "membership": snapshot.membership,
                "data": snapshot.data,
                "keep": keep,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8", "surrogatepass")
        name = f"{snapshot.index:020d}-{snapshot.term:020d}-{wal_seq:016d}.snap"
        path = self.directory / name
        tmp = path.with_name(name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_HEAD.pack(MAGIC, len(body), zlib.crc32(body)))
            f.write(body)
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.durable:
            fsync_dir(self.directory)
        return SnapshotFile(snapshot.index, snapshot.term, wal_seq, path)

    def read(self, f: SnapshotFile) -> tuple[Snapshot, bool]:
        """The snapshot and its `keep` flag; ValueError if the file is damaged."""
        raw = f.path.read_bytes()
        if len(raw) < _HEAD.size:
            raise ValueError("shorter than its header")
        magic, n, crc = _HEAD.unpack_from(raw)
        body = raw[_HEAD.size :]
        if magic != MAGIC:
            raise ValueError(f"bad magic {magic!r}")
        if len(body) != n or zlib.crc32(body) != crc:
            raise ValueError("length or CRC mismatch")
        d = json.loads(body.decode("utf-8", "surrogatepass"))
        if (d["index"], d["term"]) != (f.index, f.term):
            raise ValueError("index/term disagree with the file name")
        return Snapshot(d["index"], d["term"], d["membership"], d["data"]), bool(d["keep"])

    def load_newest(self, *, repair: bool) -> tuple[SnapshotFile, Snapshot, bool] | None:
        """The newest readable snapshot. A damaged one is skipped with a warning
        (and, when repairing, renamed `*.corrupt` so it is never picked again);
        recovery then falls back to an older one, whose log is still kept."""
        for f in self.files():
            try:
                snap, keep = self.read(f)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("snapshot %s is unreadable (%s); trying an older one", f.path, exc)
                if repair:
                    f.path.rename(f.path.with_name(f.path.name + ".corrupt"))
                continue
            return f, snap, keep
        return None

    def retain(self, count: int) -> list[SnapshotFile]:
        """Delete all but the newest `count` snapshots; return the kept ones."""
        files = self.files()
        for f in files[count:]:
            f.path.unlink()
        return files[:count]
