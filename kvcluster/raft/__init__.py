"""The sans-IO Raft core: feed it time and messages, collect what to do."""

from .core import (
    BOOTSTRAP_TERM,
    ConfigChangeError,
    ConfigError,
    HardState,
    NotLeader,
    RaftNode,
    RaftOptions,
    ReadState,
    Ready,
    Role,
    bootstrap_entry,
)
from .log import RaftLog
from .membership import Member, Membership
from .messages import Entry, EntryKind, Message, MessageType

__all__ = [
    "BOOTSTRAP_TERM",
    "ConfigChangeError",
    "ConfigError",
    "Entry",
    "EntryKind",
    "HardState",
    "Member",
    "Membership",
    "Message",
    "MessageType",
    "NotLeader",
    "RaftLog",
    "RaftNode",
    "RaftOptions",
    "ReadState",
    "Ready",
    "Role",
    "bootstrap_entry",
]
