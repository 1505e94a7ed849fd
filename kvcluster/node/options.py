"""The node layer's settings, validated once, where they are defined."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..raft import ConfigError

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
    history_keep: revisions of history (reads at a past revision, watches
    from one) the leader keeps when it compacts automatically, through the
    log, once twice as many have built up (0: never; compact by hand).
    quota_bytes: the most bytes of keys and values (rows plus history) the
    store may hold: beyond it the leader refuses writes that add data (etcd's
    "database space exceeded") until deletes or compaction free some; with
    history_keep on, it also compacts once the history holds half the quota.
    """

    read_mode: str = "read_index"
    request_timeout: float = 5.0
    snapshot_every: int = 10_000
    snapshot_keep: int = 1_000
    snapshot_chunk: int = 1 << 20
    snapshot_window: int = 4
    read_retry: float = 0.005
    session_ttl: float = 300.0
    history_keep: int = 10_000
    quota_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        # Each refusal names its setting (ConfigError, a ValueError): NodeConfig
        # builds these options to check them, so the CLI can name the flag.
        if self.read_mode not in READ_MODES:
            raise ConfigError(
                "read_mode", f"must be one of {', '.join(READ_MODES)}, got {self.read_mode!r}"
            )
        _seconds("request_timeout", self.request_timeout, 3600)
        _count("snapshot_every", self.snapshot_every, 0, " (0: never)")
        _count("snapshot_keep", self.snapshot_keep, 0)
        _count("snapshot_chunk", self.snapshot_chunk, 1)
        if self.snapshot_chunk > 8 << 20:
            raise ConfigError(
                "snapshot_chunk", f"must be 1 byte to 8 MiB, got {self.snapshot_chunk}"
            )
        _count("snapshot_window", self.snapshot_window, 1)
        _seconds("read_retry", self.read_retry, 60)
        ttl = self.session_ttl
        if not (_real(ttl) and 0.01 <= ttl <= 7 * 86_400):
            raise ConfigError("session_ttl", f"must be 0.01 s to 7 days (604800 s), got {ttl!r}")
        _count("history_keep", self.history_keep, 0)
        quota = self.quota_bytes
        if not (
            isinstance(quota, int) and not isinstance(quota, bool) and 1 << 16 <= quota <= 1 << 40
        ):
            raise ConfigError("quota_bytes", f"must be 64 KiB (65536) to 1 TiB, got {quota!r}")


def _real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _seconds(setting: str, value: object, below: float) -> None:
    if not (_real(value) and 0 < value < below):  # type: ignore[operator]
        raise ConfigError(setting, f"must be seconds above 0 and below {below:g}, got {value!r}")


def _count(setting: str, value: object, least: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(setting, f"must be an integer of at least {least}{note}, got {value!r}")
