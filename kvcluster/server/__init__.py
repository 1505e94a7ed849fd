"""The node process: tornado HTTP server around the Raft core and the kv store."""

from .config import READ_MODES, NodeConfig
from .node import NodeServer

__all__ = ["READ_MODES", "NodeConfig", "NodeServer"]
