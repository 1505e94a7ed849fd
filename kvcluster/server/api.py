"""The node's HTTP API: client routes, peer routes, and JSON errors for everything.

Any node serves any request. A follower forwards writes (and, in the `proxy`
and `lease` read modes, linearizable reads) to the leader; in `read_index` mode
it asks the leader for a read index and answers from its own state.
"""

from __future__ import annotations

import hmac
import json
from http import HTTPStatus
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import tornado.web
from tornado.http1connection import HTTP1Connection

from ..raft import Member, NotLeader
from .codec import decode_batch
from .http_conn import ConnectionFailed
from .node import NodeServer, NotApplied, ReadFailed
from .transport import SENDER_HEADER

LEADER_HEADER = "X-Kvcluster-Leader"
PEER_MAX_BODY = 1 << 30  # a snapshot travels in one (streamed) request
FORWARDED_HEADER = "X-Kvcluster-Forwarded"
CONSISTENCY = ("linearizable", "serializable")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


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
        raw = self.request.body
        if not raw:
            if required:
                raise ApiError(400, "bad_request", "a JSON object body is required")
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ApiError(400, "bad_request", f"the body is not valid UTF-8: {exc}") from exc
        except RecursionError as exc:
            raise ApiError(400, "bad_request", "the body is JSON nested too deeply") from exc
        except ValueError as exc:  # JSONDecodeError, and e.g. an integer of 5000 digits
            raise ApiError(400, "bad_request", f"the body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object")
        surrogate = _lone_surrogate(data)
        if surrogate is not None:
            raise ApiError(
                400,
                "bad_request",
                f"the body is not valid Unicode: a string holds the lone surrogate {surrogate}",
            )
        return data

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
        node = self.node
        if self.request.headers.get(FORWARDED_HEADER):
            raise ApiError(503, "not_leader", "this node is no longer the leader; retry")
        timeout = node.config.request_timeout
        leader = await node.wait_for_leader(min(timeout, 2 * node.core.options.election_timeout[1]))
        address = node.leader_address()
        if leader is None or address is None:
            raise ApiError(503, "no_leader", "no leader is elected right now; retry shortly")
        headers = {FORWARDED_HEADER: "1", "Content-Type": "application/json"}
        auth = self.request.headers.get("Authorization")
        if auth:
            headers["Authorization"] = auth
        try:
            resp = await node.pool(address).request(
                self.request.method or "GET",
                self.request.uri or "/",
                self.request.body,
                headers,
                timeout,
            )
        except ConnectionFailed as exc:
            if exc.sent:
                raise ApiError(
                    504, "timeout", f"the leader did not answer: {exc}; the outcome is unknown"
                ) from exc
            raise ApiError(503, "unavailable", f"cannot reach the leader: {exc}") from exc
        self.set_header(LEADER_HEADER, address)
        self.set_status(resp.status)
        self.finish(resp.body)


def _lone_surrogate(data: Any) -> str | None:
    """The first lone UTF-16 surrogate in any string of a parsed JSON document.

    JSON's \\ud800 escapes decode to Python strings that cannot be encoded as
    UTF-8. Stored (a member's id, say), one would make every later response
    that includes it fail to encode: a 500 on every node, for good.
    """
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return f"\\u{ord(item[exc.start]):04x}"
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


# How much more than the body limit a key route reads (and discards) in order
# to answer a JSON 413, rather than closing the connection on the client.
_DRAIN_FACTOR = 8


def _body_limit(node: NodeServer) -> int:
    """The largest body a key route accepts, as main.serve sets max_body_size:
    a value at the limit takes at most 6 bytes of JSON per byte (\\u00XX)."""
    return 8 * node.config.max_value_bytes + (1 << 20)


def _check_key(node: NodeServer, key: str) -> str:
    if not key:
        raise ApiError(400, "bad_request", "the key must not be empty: use /v1/kv/<key>")
    size = len(key.encode("utf-8"))
    if size > node.config.max_key_bytes:
        raise ApiError(
            414,
            "key_too_long",
            f"the key is {size} bytes; the limit is {node.config.max_key_bytes}",
        )
    return key


def _is_base_url(address: Any) -> TypeGuard[str]:
    """http://host:port and nothing else: what the peer transport can connect to.

    A member's address goes into the log and every node opens a link to it, so
    one it cannot parse would break every node's ready loop.
    """
    if not isinstance(address, str) or not address.isascii() or not address.isprintable():
        return False
    try:
        parts = urlsplit(address)
        port = parts.port  # raises ValueError if not a number in 0-65535
    except ValueError:
        return False
    return (
        parts.scheme == "http"
        and bool(parts.hostname)
        and bool(port)
        and parts.username is None
        and not (parts.path or parts.query or parts.fragment)
        and not any(c in address for c in " ?#")
    )


def _session(body: dict[str, Any], command: dict[str, Any]) -> dict[str, Any]:
    client_id, seq = body.get("client_id"), body.get("seq")
    if (client_id is None) != (seq is None):
        raise ApiError(400, "bad_request", "client_id and seq go together")
    if client_id is not None:
        if not isinstance(client_id, str) or not client_id or len(client_id) > 128:
            raise ApiError(400, "bad_request", "client_id must be a string of 1-128 characters")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ApiError(400, "bad_request", "seq must be a non-negative integer")
        command["client_id"], command["seq"] = client_id, seq
    return command


class WriteMixin(BaseHandler):
    async def replicate(self, command: dict[str, Any]) -> dict[str, Any] | None:
        """Commit a command here if we lead; otherwise the caller forwards."""
        node = self.node
        try:
            result = await node.propose(command, node.config.request_timeout)
        except NotLeader as exc:
            raise ApiError(503, "not_leader", "leadership changed; retry") from exc
        except NotApplied as exc:
            raise ApiError(503, "not_leader", f"{exc}; retry") from exc
        except TimeoutError as exc:
            raise ApiError(
                504, "timeout", "the write was not committed in time; the outcome is unknown"
            ) from exc
        if result is not None and "error" in result:
            raise ApiError(409, result["error"], result.get("message", ""))
        return result

    async def read_barrier(self) -> bool:
        """Wait until a linearizable read may be served here; False means forward it."""
        node = self.node
        mode = node.config.read_mode
        if self.arg("consistency", CONSISTENCY) == "serializable" or mode == "serializable":
            return True
        if mode in ("proxy", "lease") and not node.core.is_leader:
            return False
        try:
            await node.read_barrier(lease=mode == "lease", timeout=node.config.request_timeout)
        except (ReadFailed, TimeoutError) as exc:
            raise ApiError(503, "no_leader", "no leader could confirm this read; retry") from exc
        return True


@tornado.web.stream_request_body
class KeyHandler(WriteMixin):
    """GET/PUT/DELETE /v1/kv/{key}.

    The body is streamed in so that one over the server's max_body_size still
    gets a JSON 413: left to itself, tornado answers a bare, body-less 400 and
    closes the connection. Up to _DRAIN_FACTOR times the limit is read and
    thrown away, so the client can finish sending and read the answer.
    """

    _chunks: list[bytes]
    _received: int

    def prepare(self) -> None:
        super().prepare()
        self._chunks, self._received = [], 0
        limit = _body_limit(self.node)
        connection = self.request.connection
        declared = self.request.headers.get("Content-Length", "")
        if isinstance(connection, HTTP1Connection):
            size = int(declared) if declared.isascii() and declared.isdigit() else 0
            connection.set_max_body_size(max(_DRAIN_FACTOR * limit, size))
            if size > _DRAIN_FACTOR * limit:
                # Not worth reading: answer now; tornado then closes the connection.
                self.fail(413, "value_too_large", self._too_large_message(size))

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received <= _body_limit(self.node):
            self._chunks.append(chunk)
        else:
            self._chunks.clear()  # too large: keep nothing, answer 413 at the end

    def _take_body(self) -> None:
        """Put the streamed body where json_body and forwarding expect it."""
        if self._received > _body_limit(self.node):
            raise ApiError(413, "value_too_large", self._too_large_message(self._received))
        self.request.body = b"".join(self._chunks)
        self._chunks.clear()

    def _too_large_message(self, size: int) -> str:
        return (
            f"the request body is {size} bytes, more than any value within the limit "
            f"of {self.node.config.max_value_bytes} bytes can take"
        )

    async def get(self, key: str) -> None:
        try:
            key = _check_key(self.node, key)
            if not await self.read_barrier():
                return await self.forward_to_leader()
        except ApiError as exc:
            return self.fail(exc.status, exc.code, exc.message)
        kv = self.node.kv
        item = kv.get(key)
        if item is None:
            return self.fail(404, "not_found", f"no key {key!r}", revision=kv.revision)
        self.send({**item.to_dict(), "revision": kv.revision})

    async def put(self, key: str) -> None:
        try:
            self._take_body()
            key = _check_key(self.node, key)
            body = self.json_body(required=True)
            value = body.get("value")
            if value is None:
                raise ApiError(400, "bad_request", 'the body needs a "value": {"value": "..."}')
            if not isinstance(value, str):
                raise ApiError(400, "bad_request", '"value" must be a string')
            limit = self.node.config.max_value_bytes
            if len(value) > limit // 4 and len(value.encode("utf-8")) > limit:
                raise ApiError(
                    413, "value_too_large", f"the value is over the limit of {limit} bytes"
                )
            command = _session(body, {"op": "put", "key": key, "value": value})
            await self._write(command)
        except ApiError as exc:
            self.fail(exc.status, exc.code, exc.message)

    async def delete(self, key: str) -> None:
        try:
            self._take_body()
            key = _check_key(self.node, key)
            command = _session(self.json_body(required=False), {"op": "delete", "key": key})
            await self._write(command)
        except ApiError as exc:
            self.fail(exc.status, exc.code, exc.message)

    async def _write(self, command: dict[str, Any]) -> None:
        if not self.node.core.is_leader:
            return await self.forward_to_leader()
        result = await self.replicate(command)
        self.send(result or {})


class ListHandler(WriteMixin):
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
            if not await self.read_barrier():
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
            if not _is_base_url(address):
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
            (r"/v1/kv/(.*)", KeyHandler, args),
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
