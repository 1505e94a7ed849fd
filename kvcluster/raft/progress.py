"""What a leader knows about each follower's log."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class ReplicationState(enum.Enum):
    PROBE = "probe"  # one AppendEntries at a time until we find where logs match
    REPLICATE = "replicate"  # logs match: send optimistically, several in flight
    SNAPSHOT = "snapshot"  # what it needs was compacted: a snapshot is on its way


@dataclass(slots=True)
class Progress:
    match: int = 0
    next: int = 1
    state: ReplicationState = ReplicationState.PROBE
    probe_sent: bool = False
    inflight: deque[int] = field(default_factory=deque)  # last index of each unacked batch
    sent_commit: int = 0  # the highest commit index we told this follower
    recent_active: bool = False  # heard from it since the last check-quorum round
    acked_round: int = 0  # highest heartbeat round it answered (ReadIndex, lease)
    heartbeat_round: int = 0  # the last heartbeat round sent to it ...
    next_at_heartbeat: int = 0  # ... and what `next` was when it went out
    incarnation: str = ""  # which life of the follower this describes
    snapshot_sent_at: float = 0.0

    def can_send(self, max_inflight: int) -> bool:
        if self.state is ReplicationState.PROBE:
            return not self.probe_sent
        if self.state is ReplicationState.SNAPSHOT:
            return False
        return len(self.inflight) < max_inflight

    def sent(self, last_index: int) -> None:
        if self.state is ReplicationState.PROBE:
            self.probe_sent = True
        else:
            self.next = last_index + 1
            self.inflight.append(last_index)

    def acked(self, index: int) -> bool:
        """A follower accepted entries up to `index`; True if that is news."""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        if self.state is not ReplicationState.REPLICATE:
            self.state = ReplicationState.REPLICATE
            self.probe_sent = False
        return True

    def snapshot_sent(self, now: float) -> None:
        self.state = ReplicationState.SNAPSHOT
        self.snapshot_sent_at = now
        self.inflight.clear()

    def back_off(self, next_index: int) -> None:
        """The follower's log diverges before `next`: probe again from `next_index`."""
        self.state = ReplicationState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.next = max(1, next_index)
        # A follower that lost its log (restarted without storage) reports less
        # than we thought it had; believe the follower.
        self.match = min(self.match, self.next - 1)
