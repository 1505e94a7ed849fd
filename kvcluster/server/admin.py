"""Fault injection for experiments and tests: off unless enabled, always token-protected.

`POST /admin/fault {"block": ["n1", "n2"]}` makes this node drop every Raft
message to and from those peers: a network partition as this node sees it.
`{"block": []}` heals it. The Cluster sets both sides of each link.
"""

from __future__ import annotations

from .api import ApiError, BaseHandler


class FaultHandler(BaseHandler):
    def get(self) -> None:
        try:
            self._check()
        except ApiError as exc:
            return self.fail(exc.status, exc.code, exc.message)
        self.send({"block": sorted(self.node.transport.blocked)})

    def post(self) -> None:
        try:
            self._check()
            body = self.json_body(required=True)
            block = body.get("block")
            if not isinstance(block, list) or not all(isinstance(p, str) for p in block):
                raise ApiError(400, "bad_request", '"block" must be a list of node names')
        except ApiError as exc:
            return self.fail(exc.status, exc.code, exc.message)
        self.node.set_blocked(set(block))
        self.send({"block": sorted(block)})

    def _check(self) -> None:
        self.require_token()
        if not self.node.config.fault_injection:
            raise ApiError(
                403,
                "fault_injection_disabled",
                "start the node with --enable-fault-injection to use /admin/fault",
            )
