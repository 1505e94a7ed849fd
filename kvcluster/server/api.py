"""The node's HTTP API on tornado: every route but the key routes (`key_routes`).

Any node serves any request. A follower forwards writes (and, in the `proxy`
and `lease` read modes, linearizable reads) to the leader; in `read_index` mode
it asks the leader for a read index and answers from its own state.
"""

from __future__ import annotations

import hmac
import json
from http import HTTPStatus
from typing import Any

import tornado.web

from ..raft import Member, NotLeader
from .codec import decode_batch
from .node import NodeServer, NotApplied
from .operations import (
    CONSISTENCY,
    FORWARDED_HEADER,
    LEADER_HEADER,
    ApiError,
    BecameLeader,
    forward,
    is_base_url,
    json_object,
    read_barrier,
)
from .transport import SENDER_HEADER

PEER_MAX_BODY = 1 << 30  # a snapshot travels in one (streamed) request


class BaseHandler(tornado.web.RequestHandler):
    node: NodeServer

    def initialize(self, node: NodeServer) -> None:
        self.node = node

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def prepare(self) -> None:
        leader = self.node.leader_address()
        if leader:
            self.set_header(LEADER_HEADER, leader)

    def send(self, body: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, ensure_ascii=False, separators=(",", ":")))

    def fail(self, status: int, code: str, message: str, **extra: Any) -> None:
        self.send({"error": code, "message": message, **extra}, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code == 405:
            message = f"{self.request.method} is not supported on {self.request.path}"
        elif status_code >= 500:
            message = "internal error; the node keeps serving (please report this as a bug)"
        else:
            message = HTTPStatus(status_code).phrase
        code = HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        self.finish(json.dumps({"error": code, "message": message}))

    # -- helpers

    def json_body(self, *, required: bool) -> dict[str, Any]:
        return json_object(self.request.body, required=required)

    def has_token(self) -> bool:
        auth = self.request.headers.get("Authorization", "")
        expected = f"Bearer {self.node.config.token}"
        return hmac.compare_digest(auth.encode(), expected.encode())

    def require_token(self) -> None:
        if not self.has_token():
            raise ApiError(401, "unauthorized", "this route needs the cluster token")

    def arg(self, name: str, choices: tuple[str, ...] | None = None) -> str | None:
        values = self.request.query_arguments.get(name)
        if not values:
            return None
        try:
            value = values[-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, "bad_request", f"query argument {name!r} is not UTF-8") from exc
        if choices is not None and value not in choices:
            raise ApiError(400, "bad_request", f"{name} must be one of {list(choices)}")
        return value

    async def forward_to_leader(self) -> None:
        """Relay this request to the leader and its answer back to the client."""
        try:
            status, body, address = await forward(
                self.node,
                self.request.method or "GET",
                self.request.uri or "/",
                self.request.body,
                auth=self.request.headers.get("Authorization"),
                forwarded=bool(self.request.headers.get(FORWARDED_HEADER)),
            )
        except BecameLeader as exc:
            raise ApiError(503, "not_leader", "this node has just become leader; retry") from exc
        self.set_header(LEADER_HEADER, address)
        self.set_status(status)
        self.finish(body)


class KeyMethodsHandler(BaseHandler):
    """/v1/kv/{key} for the methods the key routes (`key_routes`) do not serve: 405."""


class ListHandler(BaseHandler):
    async def get(self) -> None:
        try:
            prefix = self.arg("prefix") or ""
            limit_arg = self.arg("limit")
            limit = None
            if limit_arg is not None:
                # isdigit() alone also accepts digits that int() refuses ("²"), and
                # int() refuses more than 4300 digits: any limit over 18 digits is
                # larger than any store, so it means no limit.
                digits = limit_arg.lstrip("0")
                if not (limit_arg.isascii() and limit_arg.isdigit()) or not digits:
                    raise ApiError(400, "bad_request", "limit must be a positive integer")
                limit = int(digits) if len(digits) <= 18 else None
            if not await read_barrier(self.node, self.arg("consistency", CONSISTENCY)):
                return await self.forward_to_leader()
        except ApiError as exc:
            return self.fail(exc.status, exc.code, exc.message)
        kv = self.node.kv
        items = kv.list(prefix, limit)
        self.send(
            {"kvs": [i.to_dict() for i in items], "count": len(items), "revision": kv.revision}
        )


class StatusHandler(BaseHandler):
    def get(self) -> None:
        self.send(self.node.status())


class MembersHandler(BaseHandler):
    def get(self) -> None:
        node = self.node
        self.send({"members": node.core.membership.to_dict(), "leader": node.core.leader_id})


class MemberHandler(BaseHandler):
    async def delete(self, node_id: str) -> None:
        try:
            self.require_token()
            node = self.node
            if not node.core.is_leader:
                return await self.forward_to_leader()
            if node_id not in node.core.membership.members:
                raise ApiError(404, "not_found", f"{node_id!r} is not a member")
            try:
                members = await node.change_membership(
                    "remove", node_id, node.config.request_timeout
                )
            except NotLeader as exc:
                raise ApiError(503, "not_leader", "leadership changed; retry") from exc
            except (TimeoutError, NotApplied) as exc:
                raise ApiError(504, "timeout", "the change did not commit in time") from exc
            self.send({"members": members.to_dict()})
        except ApiError as exc:
            self.fail(exc.status, exc.code, exc.message)


class RegisterHandler(BaseHandler):
    """POST /register: a new node asks to join. Followers redirect to the leader (307)."""

    async def post(self) -> None:
        try:
            self.require_token()
            node = self.node
            body = self.json_body(required=True)
            node_id, address = body.get("id"), body.get("address")
            incarnation = body.get("incarnation", "")
            if not isinstance(node_id, str) or not node_id or len(node_id) > 64:
                raise ApiError(400, "bad_request", '"id" must be a non-empty string')
            if not is_base_url(address):
                raise ApiError(
                    400, "bad_request", '"address" must be a base URL like http://host:port'
                )
            if not isinstance(incarnation, str):
                raise ApiError(400, "bad_request", '"incarnation" must be a string')
            if not node.core.is_leader:
                await node.wait_for_leader(2 * node.core.options.election_timeout[1])
            if not node.core.is_leader:
                leader = node.leader_address()
                if leader is None:
                    raise ApiError(503, "no_leader", "no leader is elected yet; retry")
                self.set_status(307)  # 307 keeps the method and the body
                self.set_header("Location", leader + "/register")
                self.finish(json.dumps({"leader": leader}))
                return
            try:
                members = await node.change_membership(
                    "add",
                    node_id,
                    node.config.request_timeout,
                    Member(address, voter=False, incarnation=incarnation),
                )
            except NotLeader as exc:
                raise ApiError(503, "not_leader", "leadership changed; retry") from exc
            except (TimeoutError, NotApplied) as exc:
                raise ApiError(504, "timeout", "the change did not commit in time") from exc
            self.send({"members": members.to_dict(), "leader": node.core.leader_id})
        except ApiError as exc:
            self.fail(exc.status, exc.code, exc.message)


@tornado.web.stream_request_body
class RaftHandler(BaseHandler):
    """POST /raft/messages: a batch of Raft messages from a peer.

    Streamed, so that a snapshot may be larger than a client request; only a
    peer with the token gets the larger limit."""

    def prepare(self) -> None:
        super().prepare()
        self._chunks: list[bytes] = []
        connection = self.request.connection
        if connection is not None and self.has_token():
            connection.set_max_body_size(PEER_MAX_BODY)  # type: ignore[attr-defined]

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def post(self) -> None:
        try:
            self.require_token()
            try:
                messages = decode_batch(b"".join(self._chunks))
            # Beyond ValueError: int(1e400) raises OverflowError, and arrays nested
            # ~100k deep make json.loads raise RecursionError.
            except (ValueError, OverflowError, RecursionError) as exc:
                raise ApiError(400, "bad_request", f"bad message batch: {exc}") from exc
        except ApiError as exc:
            return self.fail(exc.status, exc.code, exc.message)
        self.node.step(messages, self.request.headers.get(SENDER_HEADER))
        self.set_status(204)
        self.finish()


@tornado.web.stream_request_body
class RaftStreamHandler(BaseHandler):
    """POST /raft/stream: a peer's long-lived stream of message batches, one
    JSON line per batch, stepped into the core as each line completes."""

    def prepare(self) -> None:
        super().prepare()
        self._partial: list[bytes] = []
        if not self.has_token():
            self.fail(401, "unauthorized", "this route needs the cluster token")
            return
        self._sender = self.request.headers.get(SENDER_HEADER)
        connection = self.request.connection
        if connection is not None:
            connection.set_max_body_size(1 << 62)  # type: ignore[attr-defined]

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        if b"\n" not in chunk:
            self._partial.append(chunk)  # a large batch arrives in pieces
            return
        if self._partial:
            chunk = b"".join([*self._partial, chunk])
            self._partial.clear()
        *lines, rest = chunk.split(b"\n")
        if rest:
            self._partial.append(rest)
        for line in lines:
            try:
                messages = decode_batch(line)
            except (ValueError, OverflowError, RecursionError) as exc:
                self.fail(400, "bad_request", f"bad message batch: {exc}")
                return
            self.node.step(messages, self._sender)

    def post(self) -> None:
        if not self._finished:
            self.set_status(204)
            self.finish()


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        self.fail(404, "not_found", f"no route {self.request.path}; see the README for the API")


def make_app(node: NodeServer) -> tornado.web.Application:
    from .admin import FaultHandler

    args = {"node": node}
    return tornado.web.Application(
        [
            (r"/v1/kv/(.*)", KeyMethodsHandler, args),
            (r"/v1/kv", ListHandler, args),
            (r"/v1/status", StatusHandler, args),
            (r"/v1/members", MembersHandler, args),
            (r"/v1/members/([^/]+)", MemberHandler, args),
            (r"/register", RegisterHandler, args),
            (r"/raft/messages", RaftHandler, args),
            (r"/raft/stream", RaftStreamHandler, args),
            (r"/admin/fault", FaultHandler, args),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
    )
