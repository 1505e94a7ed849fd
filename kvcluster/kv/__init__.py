"""The kv state machine: an etcd-style revisioned map, applied from the Raft log."""

from .commands import Command, InvalidCommand, delete_command, parse, put_command
from .store import KeyValue, KVStore

__all__ = [
    "Command",
    "InvalidCommand",
    "KVStore",
    "KeyValue",
    "delete_command",
    "parse",
    "put_command",
]
