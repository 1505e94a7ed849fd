"""Everything a node process needs to know to start."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..raft import RaftOptions
from ..storage.wal import FsyncPolicy

READ_MODES = ("proxy", "read_index", "lease", "serializable")
EVENT_LOOPS = ("uvloop", "asyncio")


@dataclass(slots=True)
class NodeConfig:
    name: str
    token: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: let the OS pick a free port
    advertise_url: str | None = None  # how peers reach us; default http://host:port
    # Bootstrap: the initial members (name -> base URL), or empty to join via `join`.
    initial_members: dict[str, str] = field(default_factory=dict)
    join: list[str] = field(default_factory=list)  # addresses of existing members
    incarnation: str = ""
    raft: RaftOptions = field(default_factory=RaftOptions)
    read_mode: str = "read_index"
    request_timeout: float = 5.0  # how long a client request may wait for commit
    peer_timeout: float = 1.0  # how long a peer RPC may take before its batch is dropped
    max_key_bytes: int = 4096
    max_value_bytes: int = 1 << 20
    events_path: str | None = None
    fault_injection: bool = False  # the /admin/fault endpoints (always token-protected)
    storage: str = "memory"  # or "disk": a write-ahead log and snapshots in data_dir
    data_dir: str | None = None
    fsync: FsyncPolicy = "always"  # disk only: always | batch | never
    snapshot_every: int = 10_000  # entries applied between snapshots (0: never)
    snapshot_keep: int = 1_000  # entries kept behind a snapshot for slow followers
    seed: int | None = None  # the core's randomness, for reproducible experiments
    # uvloop where it is installed (it cuts a 3-node put from ~0.95 to ~0.70 ms);
    # "asyncio" to compare, or where uvloop does not exist (Windows).
    event_loop: str = "uvloop"

    def __post_init__(self) -> None:
        if self.read_mode not in READ_MODES:
            raise ValueError(f"read_mode must be one of {READ_MODES}, got {self.read_mode!r}")
        if not self.token:
            raise ValueError("a cluster token is required")
        if self.storage not in ("memory", "disk"):
            raise ValueError(f"storage must be 'memory' or 'disk', got {self.storage!r}")
        if self.fsync not in ("always", "batch", "never"):
            raise ValueError(f"fsync must be always, batch or never, got {self.fsync!r}")
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"event_loop must be one of {EVENT_LOOPS}, got {self.event_loop!r}")
        if self.storage == "disk" and not self.data_dir:
            raise ValueError("disk storage needs a data_dir")
        if self.initial_members and self.name not in self.initial_members:
            raise ValueError(f"initial_members must include this node ({self.name})")
