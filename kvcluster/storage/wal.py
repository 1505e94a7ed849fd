"""Write-ahead log segments: CRC-framed records in append-only files.

Frame: `length:u32 | crc:u32 | body`, little-endian, where `crc` is zlib.crc32
over the length bytes and the body, and the body is a type byte plus a payload:

  HARD_STATE  term:u64 | has_vote:u8 | vote (utf-8)
  ENTRY       index:u64 | term:u64 | kind:u8 | data (compact JSON, utf-8)
  SNAPSHOT    index:u64 | term:u64 | keep:u8   (a marker: the log was compacted)

Reading tells a torn write from corruption by where the file ends: the first
may be truncated, the second must stop recovery. A bad record in the last
segment is torn only if the file ends inside it (a short header, or a length
running past the end, with no sound record after it that a damaged length could
have hidden). A tail of nothing but zero bytes counts as torn too: after a
power loss a filesystem may keep a file's new size without the data of its last
writes, and no record we write is all zeros, so those are bytes that never
reached the disk. Everything else is corruption wherever it is: a complete
record (its length fits in the file) whose CRC fails or whose body makes no
sense, or an impossible length followed by anything but zeros. A complete last
record may be an acknowledged write (with one node, the quorum's only copy), so
it is never dropped on a guess; even one whose last blocks read as zeros is
reported, not cut: a stop costs an operator a look, a wrong cut costs data.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..raft import Entry, EntryKind, HardState
from .base import CorruptLogError

log = logging.getLogger("kvcluster.storage")

FsyncPolicy = Literal["always", "batch", "never"]
FSYNC_POLICIES: tuple[FsyncPolicy, ...] = ("always", "batch", "never")

FRAME = struct.Struct("<II")
LENGTH = struct.Struct("<I")
MAX_BODY = 256 << 20  # longer is impossible: we never write such a record

HARD_STATE, ENTRY, SNAPSHOT = 1, 2, 3
_HS = struct.Struct("<BQB")
_ENTRY = struct.Struct("<BQQB")
_MARK = struct.Struct("<BQQB")
_KINDS = {k.value: k for k in EntryKind}


@dataclass(frozen=True, slots=True)
class SnapshotMark:
    """Written after a snapshot file: from here on the log starts after `index`.
    `keep` says whether the entries after it were kept (their terms agreed)."""

    index: int
    term: int
    keep: bool


Record = HardState | Entry | SnapshotMark


# ---------------------------------------------------------------- encoding


def _json(data: object) -> bytes:
    # surrogatepass: a lone surrogate round-trips instead of failing the save.
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def _frame(body: bytes) -> bytes:
    n = LENGTH.pack(len(body))
    return n + LENGTH.pack(zlib.crc32(body, zlib.crc32(n))) + body


def encode_hard_state(hs: HardState) -> bytes:
    vote = b"" if hs.vote is None else hs.vote.encode("utf-8", "surrogatepass")
    return _frame(_HS.pack(HARD_STATE, hs.term, hs.vote is not None) + vote)


def encode_entry(e: Entry) -> bytes:
    return _frame(_ENTRY.pack(ENTRY, e.index, e.term, int(e.kind)) + _json(e.data))


def encode_mark(m: SnapshotMark) -> bytes:
    return _frame(_MARK.pack(SNAPSHOT, m.index, m.term, m.keep))


def decode_body(body: bytes, skip_data_upto: int = 0) -> Record:
    """Raise ValueError (or a decoding error) for a body that passed its CRC yet
    makes no sense: that is never a torn write. Entries up to `skip_data_upto`
    (covered by a snapshot) come back without their data: replay needs only
    their index and term, and parsing their JSON would dominate recovery."""
    kind = body[0]
    if kind == ENTRY:
        _, index, term, k = _ENTRY.unpack_from(body)
        if index <= skip_data_upto:
            return Entry(index, term, _KINDS[k], None)
        data = json.loads(body[_ENTRY.size :].decode("utf-8", "surrogatepass"))
        return Entry(index, term, _KINDS[k], data)
    if kind == HARD_STATE:
        _, term, has_vote = _HS.unpack_from(body)
        vote = body[_HS.size :].decode("utf-8", "surrogatepass") if has_vote else None
        return HardState(term, vote)
    if kind == SNAPSHOT:
        _, index, term, keep = _MARK.unpack_from(body)
        return SnapshotMark(index, term, bool(keep))
    raise ValueError(f"unknown record type {kind}")


# ---------------------------------------------------------------- reading


def _frame_at(buf: bytes, off: int) -> tuple[int, str]:
    """(end offset, "") of a sound frame at `off`, or (-1, why it is not one)."""
    if off + FRAME.size > len(buf):
        return -1, "short header"
    n, crc = FRAME.unpack_from(buf, off)
    if n == 0 or n > MAX_BODY:
        return -1, f"impossible record length {n}"
    end = off + FRAME.size + n
    if end > len(buf):
        return -1, f"short record: length {n} runs past the end of the file"
    body = memoryview(buf)[off + FRAME.size : end]
    if zlib.crc32(body, zlib.crc32(buf[off : off + 4])) != crc:
        return -1, "CRC mismatch"
    return end, ""


def _zeros_from(buf: bytes, off: int) -> bool:
    """Is everything from `off` to the end of the file a zero byte?"""
    return buf.count(0, off) == len(buf) - off


def _sound_frame_after(buf: bytes, off: int) -> int | None:
    """Offset of the first frame after `off` that passes its CRC, if any.

    Only run on a record the file ends inside. Any later sound record means its
    length field was damaged (it hid the records after it): not a torn write.
    """
    for pos in range(off + 1, len(buf) - FRAME.size + 1):
        if _frame_at(buf, pos)[0] != -1:
            return pos
    return None


def _torn(buf: bytes, off: int, why: str) -> tuple[bool, str]:
    """Whether the bad record at `off` in the last segment is a torn write (see
    the module docstring), and if not, why it is corruption."""
    if _zeros_from(buf, off) or off + FRAME.size > len(buf):
        return True, ""  # a zeroed tail, or the file ends inside the header
    n = LENGTH.unpack_from(buf, off)[0]
    if n == 0 or n > MAX_BODY:
        return False, f"{why}, followed by bytes that are not all zeros"
    if off + FRAME.size + n <= len(buf):
        return False, f"{why} in a complete record: the file does not end inside it"
    after = _sound_frame_after(buf, off)
    if after is not None:
        return False, f"{why}; a valid record follows at {after}"
    return True, ""  # the file ends inside the record


def read_segment(
    path: Path, *, last: bool, skip_data_upto: int = 0
) -> tuple[list[tuple[int, Record]], int | None]:
    """All (offset, record) of a segment, plus the offset of a torn tail (None if clean).

    Raises CorruptLogError for damage a crash mid-write cannot explain.
    """
    buf = path.read_bytes()
    records: list[tuple[int, Record]] = []
    off = 0
    while off < len(buf):
        end, why = _frame_at(buf, off)
        if end == -1:
            if not last:
                raise CorruptLogError(str(path), off, f"{why} (in a segment that is not the last)")
            torn, reason = _torn(buf, off, why)
            if not torn:
                raise CorruptLogError(str(path), off, reason)
            return records, off
        try:
            records.append((off, decode_body(buf[off + FRAME.size : end], skip_data_upto)))
        except (ValueError, KeyError, IndexError, struct.error) as exc:
            raise CorruptLogError(str(path), off, f"undecodable record: {exc}") from exc
        off = end
    return records, None


def truncate(
    path: Path, offset: int, *, durable: bool, fsync: Callable[[int], None] | None = None
) -> None:
    """Cut a torn tail, saying so: losing an unacknowledged write is expected,
    but it should never be silent."""
    size = path.stat().st_size
    log.warning(
        "write-ahead log %s: torn record at byte offset %d; truncating %d bytes",
        path,
        offset,
        size - offset,
    )
    with open(path, "r+b") as f:
        f.truncate(offset)
        if durable:
            f.flush()
            (fsync or os_fsync)(f.fileno())


# ---------------------------------------------------------------- writing


def segment_name(seq: int) -> str:
    return f"{seq:016d}.wal"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Segments in write order."""
    out = []
    for p in directory.glob("*.wal"):
        if p.stem.isdigit():
            out.append((int(p.stem), p))
    return sorted(out)


def os_fsync(fd: int) -> None:
    """os.fsync, looked up when called (so a test may patch it after import)."""
    os.fsync(fd)


def fsync_dir(directory: Path, fsync: Callable[[int], None] | None = None) -> None:
    """Make a created, renamed or removed name durable: fsyncing the file is not enough."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        (fsync or os_fsync)(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """The one open segment, and the fsync policy.

    - always: every `append` is fsynced before it returns (one fsync per call,
      however many records it carries: group commit).
    - batch: `append` fsyncs only once the oldest unsynced write is `interval`
      seconds old; `sync()` (called by the node on a timer every `interval`)
      fsyncs whatever is pending. Data survives a process crash at once (it is
      in the page cache) and an OS crash after at most about `interval`.
    - never: no fsync of its own; survives process crashes, not OS crashes.

    Whatever the policy, `append(..., durable=True)` and `sync(force=True)`
    fsync before returning (the segment, and under `never` its directory
    entry, which `never` does not sync when it creates a segment): that is
    how the hard state stays durable under every policy (see DiskStorage.save).

    `fsync` is injectable so tests can fail the Nth one. Any error leaves the
    writer to its owner's fail-stop: it is never retried here.
    """

    def __init__(
        self,
        directory: Path,
        seq: int,
        *,
        policy: FsyncPolicy,
        interval: float,
        segment_size: int,
        clock: Callable[[], float],
        header: Callable[[], bytes],
        fsync: Callable[[int], None] = os_fsync,
    ) -> None:
        if policy not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}, not {policy!r}")
        self.directory = directory
        self.policy = policy
        self.interval = interval
        self.segment_size = segment_size
        self._clock = clock
        self._header = header
        self._fsync_fn = fsync
        self._pending_since: float | None = None  # time of the oldest unsynced write
        self._dir_synced = False  # the open segment's name is durable in its directory
        self.seq = seq
        self._fd = -1
        self.size = 0
        self._open(seq)

    @property
    def path(self) -> Path:
        return self.directory / segment_name(self.seq)

    def _open(self, seq: int) -> None:
        self.seq = seq
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.size = 0
        self._dir_synced = False
        if self.policy != "never":
            self._sync_dir()
        head = self._header()
        if head:
            self._write(head)  # durable with the next append (or sync)

    def rotate_if_full(self) -> None:
        """Start a new segment once this one reaches `segment_size`.

        The old one is fsynced first (unless `never`), so only the last segment
        can hold a torn record after an OS crash. A record batch never spans two segments.
        """
        if self.size < self.segment_size:
            return
        self.sync()
        os.close(self._fd)
        self._open(self.seq + 1)

    def _write(self, data: bytes) -> None:
        if self._fd < 0:
            raise ValueError(f"write-ahead log {self.directory} is closed")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(data)
        if self._pending_since is None:
            self._pending_since = self._clock()

    def append(self, data: bytes, *, durable: bool = False) -> None:
        """Write `data` (whole records) and fsync as the policy says, or now if `durable`."""
        self._write(data)
        if durable or self.policy == "always":
            self._fsync()
        elif self.policy == "batch":
            assert self._pending_since is not None
            if self._clock() - self._pending_since >= self.interval:
                self._fsync()

    def sync(self, *, force: bool = False) -> None:
        """Fsync whatever is unsynced (nothing to do under `never` unless `force`)."""
        if self._pending_since is not None and (force or self.policy != "never"):
            self._fsync()

    def _fsync(self) -> None:
        self._fsync_fn(self._fd)
        self._pending_since = None
        if not self._dir_synced:  # under `never`: the data is durable, now its name
            self._sync_dir()

    def _sync_dir(self) -> None:
        fsync_dir(self.directory, self._fsync_fn)
        self._dir_synced = True

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1

    def abandon(self) -> None:
        """Close without syncing, after an I/O error: a second fsync proves nothing."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError as e:  # the storage already failed; this one adds nothing
                log.warning("closing %s after a failure: %s", self.path, e)
