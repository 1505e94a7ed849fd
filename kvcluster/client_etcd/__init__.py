"""etcd's v3 API for `kvcluster.Client`: transactions, leases and watches.

These speak etcd's JSON gateway (`/v3/...`), not kvcluster's `/v1`, so the
same calls work against a kvcluster node and against etcd 3.4 itself. Keys
and values are text here: they travel base64-encoded, and bytes that are not
UTF-8 (written by some other etcd client) come back with surrogate escapes
rather than failing.

What `/v1` has and `/v3` lacks is client sessions: a write sent twice is
applied twice. So a /v3 write is sent again only when no earlier attempt can
have reached the cluster (connection refused, "no leader"); otherwise the
client gives up with `OutcomeUnknown` (a CAS sent twice could answer False
about its own success).

kvcluster/client.py holds the methods; this package holds the wire format
(wire.py), the shapes they take and return (txn.py), and the two things
that outlive one call: a lease's background keep-alive (leases.py) and a
`Watch` stream (watch.py). Neither shares anything mutable with its Client,
so a KeepAlive runs, and a Watch can be read, in another thread.
"""

from .leases import KeepAlive, Lease, LeaseStatus
from .txn import (
    Compare,
    Delete,
    Get,
    Op,
    OpResponse,
    Put,
    Txn,
    TxnResult,
    parse_txn,
    read_only,
    txn_body,
)
from .watch import IDLE_PROBE, MAX_WATCH_MESSAGE, StreamConfig, Watch, WatchEvent
from .wire import (
    ERR_LEASE_NOT_FOUND,
    KeyValue,
    decode,
    encode,
    etcd_error,
    header_revision,
    key_range,
    number,
    prefix_end,
)

__all__ = [
    "ERR_LEASE_NOT_FOUND",
    "IDLE_PROBE",
    "MAX_WATCH_MESSAGE",
    "Compare",
    "Delete",
    "Get",
    "KeepAlive",
    "KeyValue",
    "Lease",
    "LeaseStatus",
    "Op",
    "OpResponse",
    "Put",
    "StreamConfig",
    "Txn",
    "TxnResult",
    "Watch",
    "WatchEvent",
    "decode",
    "encode",
    "etcd_error",
    "header_revision",
    "key_range",
    "number",
    "parse_txn",
    "prefix_end",
    "read_only",
    "txn_body",
]
