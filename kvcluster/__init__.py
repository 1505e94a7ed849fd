"""kvcluster: a Raft-replicated key/value store built to watch and measure consensus."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .client import Client
    from .cluster import Cluster

__all__ = ["Client", "Cluster", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the sans-IO core does not pull in pandas or requests.
    if name == "Cluster":
        from .cluster import Cluster

        return Cluster
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'kvcluster' has no attribute {name!r}")
