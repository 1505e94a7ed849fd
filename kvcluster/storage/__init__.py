"""Where a node keeps its Raft hard state and log."""

from .base import PersistedState, Storage
from .memory import MemoryStorage

__all__ = ["MemoryStorage", "PersistedState", "Storage"]
