"""Follow JSON-lines files as they grow, a bounded step at a time.

The nodes append their events to `<name>.events.jsonl` and the Cluster appends
what it did to them to `harness.events.jsonl` (see `Cluster.events()`). The
live view reads only what was added since its last look, so a long run costs
it nothing more than a short one, and at most `max_bytes` per file per look,
so a burst of events cannot stall the frames: the rest is read next time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

MAX_BYTES_PER_READ = 1 << 20


class JsonlTail:
    """One file: where we are in it, and an incomplete last line kept until it ends."""

    def __init__(self, path: Path, *, skip: bytes | None = None) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""
        # Lines containing `skip` are passed over without being parsed: the
        # nodes' many commit events, say, which the view shows through status.
        self._skip = skip

    def read(self, max_bytes: int = MAX_BYTES_PER_READ) -> list[dict[str, Any]]:
        """The records appended since the last call (complete lines only)."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # truncated or replaced: start again
                    self.offset, self._partial = 0, b""
                f.seek(self.offset)
                data = f.read(max_bytes)
        except OSError:
            return []
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_BYTES_PER_READ:
            self._partial = b""  # no record is this long: not a file of ours
        return list(self._parse(lines))

    def _parse(self, lines: list[bytes]) -> Iterator[dict[str, Any]]:
        skip = self._skip
        for line in lines:
            if not line or (skip is not None and skip in line):
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                record = orjson.loads(line)
                if isinstance(record, dict):
                    yield record


class DirectoryTail:
    """Every file matching `pattern` in a directory, new files included."""

    def __init__(self, directory: Path, pattern: str, *, skip: bytes | None = None) -> None:
        self.directory = directory
        self.pattern = pattern
        self._skip = skip
        self._tails: dict[Path, JsonlTail] = {}

    def read(self, exclude: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
        """New records from every file (files named in `exclude` left out)."""
        records: list[dict[str, Any]] = []
        for path in sorted(self.directory.glob(self.pattern)):
            if path.name in exclude:
                continue
            tail = self._tails.get(path)
            if tail is None:
                tail = self._tails[path] = JsonlTail(path, skip=self._skip)
            records.extend(tail.read())
        return records
