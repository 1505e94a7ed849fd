"""Where a node keeps its Raft hard state, log and snapshots.

`MemoryStorage` forgets everything with the process (experiments); `DiskStorage`
is a write-ahead log with snapshots and compaction (durability). Both implement
`Storage`, so the node and the core never know which one they have.
"""

from .base import CorruptLogError, PersistedState, Snapshot, Storage, StorageIdentityError
from .disk import DiskStorage
from .memory import MemoryStorage
from .wal import FSYNC_POLICIES, FsyncPolicy

__all__ = [
    "FSYNC_POLICIES",
    "CorruptLogError",
    "DiskStorage",
    "FsyncPolicy",
    "MemoryStorage",
    "PersistedState",
    "Snapshot",
    "Storage",
    "StorageIdentityError",
]
