"""Fault injection for experiments and tests: off unless enabled, always token-protected.

`POST /admin/fault` replaces this node's link faults with the body's:
  {"block": ["n1"]}          drop every Raft message to and from n1 (a partition)
  {"block_out": ["n1"]}      only to n1; {"block_in": ["n1"]}: only from n1
  {"drop": {"n1": 0.2}}      lose 20% of the messages to n1
  {"delay": {"n1": 0.05}}    deliver messages to n1 50 ms late
`{}` heals everything. The Cluster sets both ends of each link.
"""

from __future__ import annotations

from typing import Any

from .api import ApiError, BaseHandler
from .transport import LinkFaults


class FaultHandler(BaseHandler):
    def get(self) -> None:
        try:
            self._check()
        except ApiError as exc:
            return self.fail(exc.status, exc.code, exc.message)
        self.send(self.node.transport.faults.to_dict())

    def post(self) -> None:
        try:
            self._check()
            faults = parse_faults(self.json_body(required=True))
        except ApiError as exc:
            return self.fail(exc.status, exc.code, exc.message)
        self.node.set_faults(faults)
        self.send(faults.to_dict())

    def _check(self) -> None:
        self.require_token()
        if not self.node.config.fault_injection:
            raise ApiError(
                403,
                "fault_injection_disabled",
                "start the node with --enable-fault-injection to use /admin/fault",
            )


def _names(body: dict[str, Any], key: str) -> set[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ApiError(400, "bad_request", f'"{key}" must be a list of node names')
    return set(value)


def _per_peer(body: dict[str, Any], key: str, upper: float) -> dict[str, float]:
    value = body.get(key, {})
    if not isinstance(value, dict):
        raise ApiError(400, "bad_request", f'"{key}" must map node names to numbers')
    out = {}
    for peer, x in value.items():
        if isinstance(x, bool) or not isinstance(x, int | float) or not 0 <= x <= upper:
            raise ApiError(400, "bad_request", f'"{key}" values must be numbers in [0, {upper}]')
        out[peer] = float(x)
    return out


def parse_faults(body: dict[str, Any]) -> LinkFaults:
    unknown = set(body) - {"block", "block_in", "block_out", "drop", "delay"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown fault kinds: {sorted(unknown)}")
    both = _names(body, "block")
    return LinkFaults(
        block_in=both | _names(body, "block_in"),
        block_out=both | _names(body, "block_out"),
        drop=_per_peer(body, "drop", 1.0),
        delay=_per_peer(body, "delay", 60.0),
    )
