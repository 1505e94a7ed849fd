"""The kv state machine: an etcd-style MVCC store, applied from the Raft log."""

from .commands import Command, InvalidCommand, delete_command, parse, put_command
from .snapshot import LINES_FORMAT, FrozenKV
from .store import CompactedError, KeyValue, KVStore

__all__ = [
    "LINES_FORMAT",
    "Command",
    "CompactedError",
    "FrozenKV",
    "InvalidCommand",
    "KVStore",
    "KeyValue",
    "delete_command",
    "parse",
    "put_command",
]
