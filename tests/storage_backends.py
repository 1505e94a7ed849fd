"""The two storages the storage tests run against, behind one small interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvcluster.storage import DiskStorage, MemoryStorage, Storage


class Backend:
    """Opens one kind of storage and 'restarts' it: a disk storage is closed and
    reopened from its directory; memory storage survives only as the same object."""

    def __init__(self, kind: str, path: Path, **options: Any) -> None:
        self.kind, self.path, self.options = kind, path, options

    def open(self, **options: Any) -> Storage:
        if self.kind == "memory":
            return MemoryStorage()
        return DiskStorage(self.path, name="n1", **{**self.options, **options})

    def restart(self, st: Storage) -> Storage:
        if self.kind == "memory":
            return st
        st.close()
        return self.open()
