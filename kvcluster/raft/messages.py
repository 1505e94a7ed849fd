"""Raft's vocabulary: log entries and the one message shape every RPC uses.

One flat `Message` with a `type` (as etcd-io/raft does) keeps the wire codec and
the simulator trivial; each field's meaning per type is documented below.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class EntryKind(enum.IntEnum):
    NORMAL = 0  # a client command for the state machine
    NOOP = 1  # appended by every new leader so it can commit entries of its term
    CONFIG = 2  # a membership change; data is a Membership as a dict


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: Any = None


class MessageType(enum.IntEnum):
    VOTE = 1
    VOTE_RESP = 2
    PRE_VOTE = 3
    PRE_VOTE_RESP = 4
    APPEND = 5
    APPEND_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    READ_INDEX = 9
    READ_INDEX_RESP = 10
    SNAPSHOT = 11
    # The node layer's InstallSnapshot transfer (kvcluster.node.snapshots); they
    # share the wire and the peer links, but the core never sees them.
    SNAPSHOT_CHUNK = 12
    SNAPSHOT_ACK = 13
    REMOVED = 14


@dataclass(slots=True)
class Message:
    """A Raft RPC.

    Field use by type:
      VOTE/PRE_VOTE:      index, log_term = candidate's last log index and term
      *_VOTE_RESP:        reject
      APPEND:             index, log_term = previous entry; entries; commit
      APPEND_RESP:        index = last matching index (accept) or the rejected
                          previous index (reject); hint, log_term = conflict hint
      HEARTBEAT:          commit (capped at the follower's match), log_term = the
                          term of the entry there; ctx = round
      HEARTBEAT_RESP:     ctx echoed
      READ_INDEX:         ctx = the requester's read id
      READ_INDEX_RESP:    ctx echoed; index = the read index; reject if the
                          receiver could not serve it (not leader)
      SNAPSHOT:           index, log_term = the last entry the snapshot covers.
                          From a leader's core: "send this follower a snapshot"
                          (the node layer sends its latest one in chunks). Into
                          a follower's core: the node layer has received and
                          decoded one; snapshot = {"membership": ...}. Answered
                          with APPEND_RESP.
      SNAPSHOT_CHUNK:     index, log_term = the snapshot's; ctx = the offset of
                          these bytes; commit = the snapshot's size in bytes;
                          snapshot = {"membership": ..., "data": base64 bytes}
      SNAPSHOT_ACK:       index, log_term echoed; ctx = the offset wanted next;
                          reject = send nothing more
      REMOVED:            "you are no longer a member": the answer to a message
                          from a node whose removal the sender's log has
                          committed. index, log_term = the configuration entry
                          that removed it; snapshot = {"membership": the
                          sender's, "incarnation": the removed life's} (another
                          life of that node, at the same address, ignores it)
    """

    type: MessageType
    term: int
    src: str
    dst: str
    index: int = 0
    log_term: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    hint: int = 0
    ctx: int = 0
    incarnation: str = ""  # the sender's: a node restarted without its state is another
    snapshot: Any = None
