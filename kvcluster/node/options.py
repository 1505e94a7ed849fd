"""The node layer's settings, validated once, where they are defined."""

from __future__ import annotations

from dataclasses import dataclass

READ_MODES = ("proxy", "read_index", "lease", "serializable")


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """How a node serves requests (the Raft timing is `RaftOptions`).

    read_mode: `proxy` (followers relay linearizable reads to the leader),
    `read_index` (followers ask the leader for its commit index and serve
    locally), `lease` (the leader serves at once while its lease holds),
    `serializable` (every node serves its own, possibly stale, state).
    request_timeout: how long a request may wait for its outcome.
    snapshot_every: applied entries between snapshots (0: never);
    snapshot_keep: entries kept behind a snapshot for slightly slow followers;
    snapshot_chunk: bytes per InstallSnapshot message; snapshot_window: chunks
    in flight to one follower. read_retry: how soon a read whose leader did
    not confirm it tries again. session_ttl: how long a client session may
    stay idle before the leader expires it (by its clock, through the log);
    the leader commits its clock every tenth of that while sessions exist.
    """

    read_mode: str = "read_index"
    request_timeout: float = 5.0
    snapshot_every: int = 10_000
    snapshot_keep: int = 1_000
    snapshot_chunk: int = 1 << 20
    snapshot_window: int = 4
    read_retry: float = 0.005
    session_ttl: float = 300.0

    def __post_init__(self) -> None:
        if self.read_mode not in READ_MODES:
            raise ValueError(f"read_mode must be one of {READ_MODES}, got {self.read_mode!r}")
        if not 0 < self.request_timeout < 3600:
            raise ValueError("request_timeout must be between 0 and 3600 seconds")
        if self.snapshot_every < 0 or self.snapshot_keep < 0:
            raise ValueError("snapshot_every and snapshot_keep must not be negative")
        if not 0 < self.snapshot_chunk <= 8 << 20 or self.snapshot_window < 1:
            raise ValueError("snapshot_chunk must be 1 byte to 8 MiB, snapshot_window at least 1")
        if not 0 < self.read_retry < 60:
            raise ValueError("read_retry must be between 0 and 60 seconds")
        if not 0.01 <= self.session_ttl <= 7 * 86_400:
            raise ValueError("session_ttl must be between 0.01 seconds and 7 days")
