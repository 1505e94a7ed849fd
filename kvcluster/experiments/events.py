"""Reading the nodes' event files as they grow, and marking what the harness did.

`Cluster.events()` re-reads every file; an experiment that looks at the events
after each of a hundred trials would read the same lines a hundred times. An
`EventTail` remembers how far it got in each file and parses only what is new.

The nodes cannot log their own SIGKILL or SIGSTOP, so `Cluster` writes each
fault it injects to `harness.events.jsonl` in its work directory, on the same
monotonic clock (`Cluster.mark`; `mark` below adds the harness's own, such as
the end of a scenario). `Cluster.events()` merges every `*.events.jsonl`, so
the marks show up there too (event `inject`, field `action`), ready for
timelines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..cluster import Cluster


def mark(
    cluster: Cluster, action: str, node: int | None = None, t: float | None = None, **fields: Any
) -> float:
    """Record that the harness did `action` (to node `node`) at `t` (default now); returns `t`."""
    return cluster.mark(action, node, t=t, **fields)


class EventTail:
    """New event records of every node since the last call, oldest first."""

    def __init__(self, work_dir: str | Path) -> None:
        self.work_dir = Path(work_dir)
        self._offsets: dict[Path, int] = {}

    def read(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for path in sorted(self.work_dir.glob("*.events.jsonl")):
            offset = self._offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line being written is read next time
            self._offsets[path] = offset + end
            for line in data[:end].splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        records.sort(key=lambda r: r.get("t", 0.0))
        return records

    def skip(self) -> None:
        """Forget everything written so far."""
        self.read()


def frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Records as a DataFrame with the columns analyses expect, even when empty."""
    df = pd.DataFrame.from_records(records)
    for column in ("t", "node", "event", "term", "role", "for_term"):
        if column not in df.columns:
            df[column] = pd.Series(dtype="float64" if column in ("t", "term") else "object")
    return df
