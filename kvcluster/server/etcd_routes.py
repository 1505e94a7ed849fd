"""etcd's v3 JSON gateway API on the node's one HTTP stack.

The routes only translate: `etcd_wire` turns etcd's JSON into the store's
commands and read arguments, the node layer runs them exactly as it runs /v1
(a write through the log, forwarded to the leader by a follower; a
linearizable read behind a read barrier, a serializable one from local
state), and `etcd_wire` renders the store's answer as etcd's gateway would.
A follower relays the HTTP request itself, so what comes back from the leader
is already etcd's JSON and goes out as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..node import COMMAND, LEASE_READ, RANGE, Answer, Request
from . import etcd_wire as wire
from .etcd_watch import WATCH_BODY, EtcdWatches
from .http import Reply, Route
from .http import Request as HttpRequest

if TYPE_CHECKING:
    from .routes import Routes

Render = Callable[[Mapping[str, Any], Mapping[str, str]], bytes]


class EtcdRoutes:
    """The /v3 routes and GET /version (see the module docstring)."""

    def __init__(self, routes: Routes, max_body: int) -> None:
        self.routes = routes
        self.driver = routes.driver
        config = self.driver.config
        self.limits = wire.Limits(config.max_key_bytes, config.max_value_bytes)
        # One id for the whole cluster, from what every member shares and no
        # outsider can guess back (the token itself never leaves the node).
        digest = hashlib.sha256(b"kvcluster cluster id\0" + config.token.encode()).hexdigest()
        self.cluster_id = wire.uint64_id(digest)
        self.member_id = wire.uint64_id(config.name)

        def post(handler: Callable[[HttpRequest, Reply], None]) -> dict[str, Route]:
            return {"POST": Route(handler, max_body=max_body)}

        kv = {
            "range": post(self.range),
            "put": post(self.put),
            "deleterange": post(self.delete_range),
            "txn": post(self.txn),
            "compaction": post(self.compaction),
        }
        self.table: dict[str, dict[str, Route]] = {
            "/version": {"GET": Route(self.version)},
            "/v3/maintenance/status": post(self.status),
            "/v3/cluster/member/list": post(self.member_list),
        }
        for name, route in kv.items():
            self.table[f"/v3/kv/{name}"] = route
        lease = {
            "grant": post(self.lease_grant),
            "revoke": post(self.lease_revoke),
            "keepalive": post(self.lease_keepalive),
            "timetolive": post(self.lease_timetolive),
            "leases": post(self.lease_leases),
        }
        for name, route in lease.items():
            self.table[f"/v3/lease/{name}"] = route
        for name in ("revoke", "timetolive", "leases"):  # etcd 3.4's older paths
            self.table[f"/v3/kv/lease/{name}"] = lease[name]
        # Watches: served here, from this node's applied state (etcd_watch.py).
        self.watches = EtcdWatches(self.driver, self.head, self.limits, self.fail)
        self.table["/v3/watch"] = {"POST": Route(self.watches.watch, max_body=WATCH_BODY)}

    # ------------------------------------------------------------------ answers

    def head(self, revision: int) -> dict[str, str]:
        return wire.header(self.cluster_id, self.member_id, revision, self.driver.node.raft.term)

    def fail(self, reply: Reply, exc: wire.EtcdError) -> None:
        leader = self.driver.node.leader_address()
        self.routes.answer(reply, Answer(0, exc.status, raw=exc.body(), leader=leader))

    def submit(self, http: HttpRequest, reply: Reply, req: Request, render: Render) -> None:
        """Hand `req` to the node layer; its answer is rendered as etcd's."""

        def etcd_answer(answer: Answer) -> Answer:
            if answer.raw is not None:  # relayed: the leader wrote etcd's answer already
                return answer
            body = answer.body or {}
            if answer.status == 200:
                revision = int(body.get("revision", self.driver.node.kv.revision))
                raw = render(body, self.head(revision))
                return Answer(answer.id, 200, raw=raw, leader=answer.leader)
            exc = wire.error_for(body)
            return Answer(answer.id, exc.status, raw=exc.body(), leader=answer.leader)

        self.routes.submit(http, reply, req, convert=etcd_answer)

    # ------------------------------------------------------------------ kv

    def range(self, http: HttpRequest, reply: Reply) -> None:
        try:
            request = wire.parse_range(wire.body_of(http.body), self.limits)
        except wire.EtcdError as exc:
            return self.fail(reply, exc)
        req = Request(0, RANGE, payload=request.read_args(), serializable=request.serializable)
        self.submit(http, reply, req, wire.render_range)

    def put(self, http: HttpRequest, reply: Reply) -> None:
        self._command(http, reply, wire.parse_put, wire.render_put)

    def delete_range(self, http: HttpRequest, reply: Reply) -> None:
        self._command(http, reply, wire.parse_delete_range, wire.render_delete_range)

    def txn(self, http: HttpRequest, reply: Reply) -> None:
        self._command(http, reply, lambda b, lim: wire.parse_txn(b, lim).command(), wire.render_txn)

    def compaction(self, http: HttpRequest, reply: Reply) -> None:
        self._command(
            http, reply, wire.parse_compaction, lambda _result, head: wire.render_compaction(head)
        )

    def _command(
        self,
        http: HttpRequest,
        reply: Reply,
        parse: Callable[[Mapping[str, Any], wire.Limits], dict[str, Any]],
        render: Render,
    ) -> None:
        try:
            command = parse(wire.body_of(http.body), self.limits)
        except wire.EtcdError as exc:
            return self.fail(reply, exc)
        self.submit(http, reply, Request(0, COMMAND, payload=command), render)

    # ------------------------------------------------------------------ leases

    def lease_grant(self, http: HttpRequest, reply: Reply) -> None:
        self._command(http, reply, wire.parse_lease_grant, wire.render_lease_grant)

    def lease_revoke(self, http: HttpRequest, reply: Reply) -> None:
        self._command(
            http,
            reply,
            wire.parse_lease_revoke,
            lambda _result, head: wire.render_lease_revoke(head),
        )

    def lease_keepalive(self, http: HttpRequest, reply: Reply) -> None:
        """One keep-alive, answered as etcd's stream of one message. A lease
        that is gone is not an error here: etcd answers 200 with TTL 0."""
        try:
            command = wire.parse_lease_keepalive(wire.body_of(http.body), self.limits)
        except wire.EtcdError as exc:
            return self.fail(reply, exc)
        lease_id = command["id"]

        def etcd_answer(answer: Answer) -> Answer:
            if answer.raw is not None:  # relayed: already etcd's answer
                return answer
            body = answer.body or {}
            if answer.status == 200:
                ttl = int(body["ttl"])
            elif body.get("error") == "lease_not_found":
                ttl = 0
            else:
                exc = wire.error_for(body)
                return Answer(answer.id, exc.status, raw=exc.body(), leader=answer.leader)
            revision = int(body.get("revision", self.driver.node.kv.revision))
            raw = wire.render_lease_keepalive(lease_id, ttl, self.head(revision))
            return Answer(answer.id, 200, raw=raw, leader=answer.leader)

        req = Request(0, COMMAND, payload=command)
        self.routes.submit(http, reply, req, convert=etcd_answer)

    def lease_timetolive(self, http: HttpRequest, reply: Reply) -> None:
        try:
            request = wire.parse_lease_timetolive(wire.body_of(http.body), self.limits)
        except wire.EtcdError as exc:
            return self.fail(reply, exc)
        args = {"kind": "timetolive", "id": request.id, "keys": request.keys}
        self.submit(http, reply, Request(0, LEASE_READ, payload=args), wire.render_lease_timetolive)

    def lease_leases(self, http: HttpRequest, reply: Reply) -> None:
        try:
            wire.body_of(http.body)  # etcd's request is empty: any JSON object (or none) will do
        except wire.EtcdError as exc:
            return self.fail(reply, exc)
        req = Request(0, LEASE_READ, payload={"kind": "leases"})
        self.submit(
            http, reply, req, lambda result, head: wire.render_lease_leases(result["ids"], head)
        )

    # ------------------------------------------------------------------ cluster

    def version(self, http: HttpRequest, reply: Reply) -> None:
        reply(200, wire.render_version(), [])

    def status(self, http: HttpRequest, reply: Reply) -> None:
        node = self.driver.node
        core = node.raft
        leader = core.leader_id
        status = wire.Status(
            leader=wire.uint64_id(leader) if leader else 0,
            raft_index=core.log.last_index(),
            raft_term=core.term,
            raft_applied_index=node.applied_index,
            is_learner=not core.is_voter(),
        )
        reply(200, wire.render_status(status, self.head(node.kv.revision)), [])

    def member_list(self, http: HttpRequest, reply: Reply) -> None:
        node = self.driver.node
        members = [
            wire.Member(
                id=wire.uint64_id(name),
                name=name,
                peer_urls=(m.address,),
                client_urls=(m.address,),
                is_learner=not m.voter,
            )
            for name, m in sorted(node.raft.membership.members.items())
        ]
        reply(200, wire.render_member_list(members, self.head(node.kv.revision)), [])
