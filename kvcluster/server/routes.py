"""Every HTTP route of a node, on the one HTTP stack: one router, one envelope.

A route parses and checks what the client sent (`validate`), turns it into a
node-layer `Request` and hands it to the driver; the answer comes back as an
`Answer` and leaves through `answer()`, the only place a node's response is
written: the JSON body (or a leader's relayed body, untouched), the error
envelope, the `X-Kvcluster-Leader` header. Which node serves a request, and
how, is the node layer's decision: no route looks at roles.

    GET|PUT|DELETE /v1/kv/<key>   GET /v1/kv?prefix=&after=&limit=   GET /v1/status
    GET /v1/members   DELETE /v1/members/<id> (token)   POST /register (token)
    POST /raft/stream, POST /raft/messages (token)   GET|POST /admin/fault (token)
    GET /metrics (Prometheus text)   GET /health (etcd's)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson

from ..node import (
    ADD_MEMBER,
    DELETE,
    GET,
    LIST,
    OPEN_SESSION,
    PUT,
    REMOVE_MEMBER,
    Answer,
    Request,
)
from ..node.requests import READS, WRITES
from ..raft import Member
from .codec import decode_batch
from .driver import FORWARDED_HEADER, LEADER_HEADER, NodeDriver
from .etcd_routes import EtcdRoutes
from .faults import parse_disk_fault, parse_faults
from .http import Reply, Route, error_body
from .http import Request as HttpRequest
from .peers import MAX_LINE, SENDER_HEADER
from .validate import (
    ApiError,
    choice,
    is_base_url,
    json_object,
    key_from_path,
    member_id,
    nonce_of,
    path_segment,
    positive_int,
    query_args,
    session_of,
    value_of,
)

log = logging.getLogger(__name__)

KV_PREFIX = "/v1/kv/"
MEMBERS_PREFIX = "/v1/members/"
CONSISTENCY = ("linearizable", "serializable")
SMALL_BODY = 64 << 10  # every route but the key writes and the peer routes


class Routes:
    """The router the HTTP server asks: `routes(method, path)`."""

    def __init__(self, driver: NodeDriver) -> None:
        self.driver = driver
        config = driver.config
        self.max_key = config.max_key_bytes
        self.max_value = config.max_value_bytes
        # A value at the limit takes at most 6 bytes of JSON per byte (\u00XX).
        value_body = 6 * config.max_value_bytes + SMALL_BODY
        kv = {
            "GET": Route(self.get_key),
            "PUT": Route(self.put_key, max_body=value_body),
            "DELETE": Route(self.delete_key),
        }
        self._kv = kv
        self._exact: dict[str, dict[str, Route]] = {
            "/v1/kv": {"GET": Route(self.list_keys)},
            "/v1/status": {"GET": Route(self.status)},
            "/v1/members": {"GET": Route(self.members)},
            "/v1/sessions": {"POST": Route(self.open_session)},
            "/register": {"POST": Route(self.register, token=True)},
            "/raft/stream": {
                "POST": Route(self.stream_end, max_body=MAX_LINE, token=True, lines=self.line)
            },
            "/raft/messages": {"POST": Route(self.batch, max_body=MAX_LINE, token=True)},
            "/admin/fault": {
                "GET": Route(self.get_faults, token=True),
                "POST": Route(self.set_faults, token=True),
            },
        }
        self._member = {"DELETE": Route(self.remove_member, token=True)}
        self._read_mode = config.read_mode
        # etcd's v3 JSON gateway API, beside /v1 on the same store.
        self._exact.update(EtcdRoutes(self, max_body=value_body).table)
        self._instrument()

    def _instrument(self) -> None:
        """Metrics: /metrics and /health, and every client route counted and timed
        (the peer routes are not: a stream lasts as long as its link)."""
        metrics = self.metrics = self.driver.metrics
        self._exact.update(metrics.table())
        for path, table in self._exact.items():
            if not path.startswith("/raft/"):
                for method, route in table.items():
                    table[method] = metrics.instrument(method, path, route)
        for method, route in self._kv.items():
            self._kv[method] = metrics.instrument(method, KV_PREFIX + "{key}", route)
        for method, route in self._member.items():
            self._member[method] = metrics.instrument(method, MEMBERS_PREFIX + "{id}", route)

    def __call__(self, method: str, path: str) -> Route | int | None:
        if path.startswith(KV_PREFIX):
            table = self._kv
        elif path.startswith(MEMBERS_PREFIX):
            rest = path[len(MEMBERS_PREFIX) :]
            if not rest or "/" in rest:
                return None
            table = self._member
        else:
            found = self._exact.get(path)
            if found is None:
                return None
            table = found
        return table.get(method, 405)

    # ------------------------------------------------------------------ answers

    def answer(self, reply: Reply, answer: Answer) -> None:
        """Write a node-layer answer: the one place responses are made."""
        headers: list[tuple[str, str]] = []
        if answer.leader:
            headers.append((LEADER_HEADER, answer.leader))
        if answer.redirect:
            headers.append(("Location", answer.redirect + "/register"))
        body = answer.raw if answer.raw is not None else orjson.dumps(answer.body or {})
        reply(answer.status, body, headers)

    def fail(self, reply: Reply, exc: ApiError) -> None:
        """A request the routes refuse themselves (bad input), as an answer."""
        raw = error_body(exc.code, exc.message, **exc.extra)
        self.answer(reply, Answer(0, exc.status, raw=raw, leader=self._leader()))

    def ok(self, reply: Reply, body: dict[str, Any]) -> None:
        """What the routes answer themselves (status, members), as an answer."""
        self.answer(reply, Answer(0, 200, body, leader=self._leader()))

    def _leader(self) -> str | None:
        return self.driver.node.leader_address()

    def submit(
        self,
        http: HttpRequest,
        reply: Reply,
        req: Request,
        convert: Callable[[Answer], Answer] | None = None,
    ) -> None:
        """Hand a request to the node layer; the answer is written when it comes
        (after `convert`, which renders it in another API's format)."""
        req.forwarded = FORWARDED_HEADER.lower() in http.headers
        req.wire = (http.method, http.target, http.body, http.headers.get("authorization"))
        if req.op in READS:  # metrics: reads by the mode they are served in
            self.metrics.read("serializable" if req.serializable else self._read_mode)
        elif req.op in WRITES and not req.forwarded:
            # Metrics: a client's write that fails is a failed proposal (counted
            # where the client sent it, so a relayed one is counted once).
            self.driver.submit(req, lambda a: self._write_answered(reply, a, convert))
            return
        if convert is None:
            self.driver.submit(req, lambda a: self.answer(reply, a))
        else:
            self.driver.submit(req, lambda a: self.answer(reply, convert(a)))

    def _write_answered(
        self, reply: Reply, answer: Answer, convert: Callable[[Answer], Answer] | None
    ) -> None:
        if answer.status >= 500:
            self.metrics.proposals_failed += 1
        self.answer(reply, answer if convert is None else convert(answer))

    # ------------------------------------------------------------------ keys

    def get_key(self, http: HttpRequest, reply: Reply) -> None:
        try:
            key = key_from_path(http.path[len(KV_PREFIX) :], self.max_key)
            query = http.query
            if not query or query == "consistency=linearizable":
                serializable = False
            elif query == "consistency=serializable":  # as the Client sends it: no parsing
                serializable = True
            else:
                consistency = choice(query_args(query), "consistency", CONSISTENCY)
                serializable = consistency == "serializable"
        except ApiError as exc:
            return self.fail(reply, exc)
        req = Request(0, GET, key, serializable=serializable)
        self.submit(http, reply, req)

    def put_key(self, http: HttpRequest, reply: Reply) -> None:
        try:
            key = key_from_path(http.path[len(KV_PREFIX) :], self.max_key)
            body = json_object(http.body, required=True)
            value = value_of(body, self.max_value)
            client_id, seq = session_of(body)
        except ApiError as exc:
            return self.fail(reply, exc)
        self.submit(http, reply, Request(0, PUT, key, value, client_id, seq))

    def delete_key(self, http: HttpRequest, reply: Reply) -> None:
        try:
            key = key_from_path(http.path[len(KV_PREFIX) :], self.max_key)
            client_id, seq = session_of(json_object(http.body, required=False))
        except ApiError as exc:
            return self.fail(reply, exc)
        self.submit(http, reply, Request(0, DELETE, key, None, client_id, seq))

    def open_session(self, http: HttpRequest, reply: Reply) -> None:
        """A new session id for at-most-once writes; body {"nonce": "..."}, optional."""
        try:
            nonce = nonce_of(json_object(http.body, required=False))
        except ApiError as exc:
            return self.fail(reply, exc)
        self.submit(http, reply, Request(0, OPEN_SESSION, client_id=nonce, seq=0))

    def list_keys(self, http: HttpRequest, reply: Reply) -> None:
        try:
            args = query_args(http.query)
            prefix = args.get("prefix", "")
            if len(prefix.encode("utf-8", "surrogatepass")) > self.max_key:
                raise ApiError(414, "key_too_long", f"the prefix is over {self.max_key} bytes")
            after = args.get("after")
            if after is not None and len(after.encode("utf-8", "surrogatepass")) > self.max_key:
                raise ApiError(414, "key_too_long", f"after is over {self.max_key} bytes")
            limit = positive_int(args, "limit")
            consistency = choice(args, "consistency", CONSISTENCY)
        except ApiError as exc:
            return self.fail(reply, exc)
        req = Request(
            0,
            LIST,
            prefix,
            limit=limit,
            payload=None if after is None else {"after": after},
            serializable=consistency == "serializable",
        )
        self.submit(http, reply, req)

    # ------------------------------------------------------------------ cluster

    def status(self, http: HttpRequest, reply: Reply) -> None:
        self.ok(reply, self.driver.status())

    def members(self, http: HttpRequest, reply: Reply) -> None:
        node = self.driver.node
        self.ok(reply, {"members": node.raft.membership.to_dict(), "leader": node.leader_id})

    def remove_member(self, http: HttpRequest, reply: Reply) -> None:
        try:
            node_id = member_id(path_segment(http.path[len(MEMBERS_PREFIX) :], "member id"))
        except ApiError as exc:
            return self.fail(reply, exc)
        self.submit(http, reply, Request(0, REMOVE_MEMBER, node_id))

    def register(self, http: HttpRequest, reply: Reply) -> None:
        """A new node asks to join; a follower answers 307 to the leader."""
        try:
            body = json_object(http.body, required=True)
            node_id = member_id(body.get("id"))
            address, incarnation = body.get("address"), body.get("incarnation", "")
            if not is_base_url(address):
                raise ApiError(
                    400, "bad_request", '"address" must be a base URL like http://host:port'
                )
            scheme = self.driver.config.scheme
            if not address.startswith(scheme + "://"):
                # Every member calls every other with this cluster's scheme.
                raise ApiError(400, "bad_request", f'"address" must be {scheme}:// in this cluster')
            if not isinstance(incarnation, str) or len(incarnation) > 64:
                raise ApiError(400, "bad_request", '"incarnation" must be a short string')
        except ApiError as exc:
            return self.fail(reply, exc)
        member = Member(address, voter=False, incarnation=incarnation)
        self.submit(http, reply, Request(0, ADD_MEMBER, node_id, member=member))

    # ------------------------------------------------------------------ peers

    def line(self, http: HttpRequest, line: bytes) -> None:
        """One batch of a peer's stream."""
        try:
            messages = decode_batch(line)
        except ValueError as exc:
            # A peer speaking nonsense: drop the batch (Raft resends what matters).
            log.warning("bad message batch from %s: %s", http.remote, exc)
            return
        if messages:  # metrics: bytes received by peer; heartbeat round trips
            self.metrics.received(messages, len(line) + 1)
        self.driver.step(messages, http.headers.get(SENDER_HEADER.lower()))

    def stream_end(self, http: HttpRequest, reply: Reply) -> None:
        self.answer(reply, Answer(0, 204, raw=b""))

    def batch(self, http: HttpRequest, reply: Reply) -> None:
        try:
            messages = decode_batch(http.body)
        except ValueError as exc:
            return self.fail(reply, ApiError(400, "bad_request", f"bad message batch: {exc}"))
        self.driver.step(messages, http.headers.get(SENDER_HEADER.lower()))
        self.answer(reply, Answer(0, 204, raw=b""))

    def get_faults(self, http: HttpRequest, reply: Reply) -> None:
        if not self.driver.config.fault_injection:
            return self.fail(reply, _FAULTS_OFF)
        self.ok(reply, self.driver.peers.faults.to_dict())

    def set_faults(self, http: HttpRequest, reply: Reply) -> None:
        try:
            if not self.driver.config.fault_injection:
                raise _FAULTS_OFF
            body = json_object(http.body, required=True)
            faults = parse_faults(body)
            disk = parse_disk_fault(body)
        except ApiError as exc:
            return self.fail(reply, exc)
        self.driver.set_faults(faults)
        if disk is not None:
            self.driver.break_disk(*disk)
        self.ok(reply, faults.to_dict())


_FAULTS_OFF = ApiError(
    403,
    "fault_injection_disabled",
    "start the node with --enable-fault-injection to use /admin/fault",
)
