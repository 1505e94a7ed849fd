"""A node's structured event log: one JSON object per line.

Times are `time.monotonic()`, a clock every process on a host shares, so the
files of all nodes merge into one timeline (Cluster.events()).
"""

from __future__ import annotations

import json
import time
from typing import IO, Any


class EventLog:
    def __init__(self, path: str | None, node: str) -> None:
        self.node = node
        self._file: IO[str] | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self._buffer: list[str] = []

    def emit(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"t": time.monotonic(), "node": self.node, "event": event, **fields}
        self._buffer.append(json.dumps(record, separators=(",", ":")))

    def emit_raft(self, events: list[dict[str, Any]]) -> None:
        if self._file is None:
            return
        t = time.monotonic()
        urgent = False
        for e in events:
            self._buffer.append(json.dumps({"t": t, "node": self.node, **e}, separators=(",", ":")))
            urgent = urgent or e["event"] != "commit"
        if urgent:  # role changes are rare and must survive a SIGKILL a moment later
            self.flush()

    def flush(self) -> None:
        if self._file is not None and self._buffer:
            self._file.write("\n".join(self._buffer) + "\n")
            self._file.flush()
            self._buffer.clear()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
