"""Where a node keeps its Raft hard state, log and snapshots.

`MemoryStorage` forgets everything with the process (experiments); `DiskStorage`
is a write-ahead log with snapshots and compaction (durability). Both implement
`Storage`, so the node and the core never know which one they have.
`FailingStorage` wraps either to fail like a disk, for fail-stop tests.
"""

from .base import (
    CorruptLogError,
    PersistedState,
    SnapshotMeta,
    SnapshotReceiver,
    SnapshotSource,
    Storage,
    StorageError,
    StorageFailed,
    StorageIdentityError,
)
from .disk import DiskStorage
from .faulty import FailingStorage
from .memory import MemoryStorage
from .wal import FSYNC_POLICIES, FsyncPolicy

__all__ = [
    "FSYNC_POLICIES",
    "CorruptLogError",
    "DiskStorage",
    "FailingStorage",
    "FsyncPolicy",
    "MemoryStorage",
    "PersistedState",
    "SnapshotMeta",
    "SnapshotReceiver",
    "SnapshotSource",
    "Storage",
    "StorageError",
    "StorageFailed",
    "StorageIdentityError",
]
