"""The sans-IO node layer between client requests and the Raft core (see node.py)."""

from ..storage import SnapshotMeta, SnapshotReceiver, SnapshotSource
from .node import Node, NodeReady, SnapshotCapture
from .options import READ_MODES, NodeOptions
from .requests import (
    ADD_MEMBER,
    COMMAND,
    DELETE,
    GET,
    LEASE_READ,
    LIST,
    OPEN_SESSION,
    PUT,
    RANGE,
    REMOVE_MEMBER,
    Answer,
    Failure,
    Forward,
    Request,
)

__all__ = [
    "ADD_MEMBER",
    "COMMAND",
    "DELETE",
    "GET",
    "LEASE_READ",
    "LIST",
    "OPEN_SESSION",
    "PUT",
    "RANGE",
    "READ_MODES",
    "REMOVE_MEMBER",
    "Answer",
    "Failure",
    "Forward",
    "Node",
    "NodeOptions",
    "NodeReady",
    "Request",
    "SnapshotCapture",
    "SnapshotMeta",
    "SnapshotReceiver",
    "SnapshotSource",
]
