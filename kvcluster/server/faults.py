"""Fault injection for experiments and tests: off unless enabled, always token-protected.

`POST /admin/fault` replaces this node's link faults with the body's:
  {"block": ["n1"]}          drop every Raft message to and from n1 (a partition)
  {"block_out": ["n1"]}      only to n1; {"block_in": ["n1"]}: only from n1
  {"drop": {"n1": 0.2}}      lose 20% of the messages to n1
  {"delay": {"n1": 0.05}}    deliver messages to n1 50 ms late
  {"disk": {"fail": "save", "after": 3}}
                             the 3rd write to storage from now fails (ENOSPC;
                             "fsync": an fsync fails, EIO): the node stops
`{}` heals the links (a broken disk stays broken: the node has stopped).
The Cluster sets both ends of each link.
"""

from __future__ import annotations

from typing import Any

from .peers import LinkFaults
from .validate import ApiError

MAX_PEERS = 1024


def _names(body: dict[str, Any], key: str) -> set[str]:
    value = body.get(key, [])
    if (
        not isinstance(value, list)
        or len(value) > MAX_PEERS
        or not all(isinstance(p, str) and len(p) <= 256 for p in value)
    ):
        raise ApiError(400, "bad_request", f'"{key}" must be a list of node names')
    return set(value)


def _per_peer(body: dict[str, Any], key: str, upper: float) -> dict[str, float]:
    value = body.get(key, {})
    if not isinstance(value, dict) or len(value) > MAX_PEERS:
        raise ApiError(400, "bad_request", f'"{key}" must map node names to numbers')
    out = {}
    for peer, x in value.items():
        if isinstance(x, bool) or not isinstance(x, int | float) or not 0 <= x <= upper:
            raise ApiError(400, "bad_request", f'"{key}" values must be numbers in [0, {upper}]')
        out[peer] = float(x)
    return out


DISK_FAULTS = ("save", "fsync", "snapshot")


def parse_disk_fault(body: dict[str, Any]) -> tuple[str, int] | None:
    """The disk fault asked for, as (kind, N): the Nth call of that kind fails."""
    disk = body.get("disk")
    if disk is None:
        return None
    if not isinstance(disk, dict) or set(disk) - {"fail", "after"}:
        raise ApiError(400, "bad_request", '"disk" must be {"fail": kind, "after": N}')
    kind, after = disk.get("fail", "save"), disk.get("after", 1)
    if kind not in DISK_FAULTS:
        raise ApiError(400, "bad_request", f'"disk.fail" must be one of {list(DISK_FAULTS)}')
    if isinstance(after, bool) or not isinstance(after, int) or not 1 <= after <= 1_000_000:
        raise ApiError(400, "bad_request", '"disk.after" must be an integer from 1 to 1000000')
    return kind, after


def parse_faults(body: dict[str, Any]) -> LinkFaults:
    unknown = set(body) - {"block", "block_in", "block_out", "drop", "delay", "disk"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown fault kinds: {sorted(unknown)}")
    both = _names(body, "block")
    return LinkFaults(
        block_in=both | _names(body, "block_in"),
        block_out=both | _names(body, "block_out"),
        drop=_per_peer(body, "drop", 1.0),
        delay=_per_peer(body, "delay", 60.0),
    )
