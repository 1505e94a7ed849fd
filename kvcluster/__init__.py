"""kvcluster: a Raft-replicated key/value store built to watch and measure consensus."""

__version__ = "0.1.0"
