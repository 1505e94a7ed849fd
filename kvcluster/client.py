"""The synchronous kvcluster client: any endpoint, leader discovery, retries, sessions.

    with Client(["http://127.0.0.1:7001", "http://127.0.0.1:7002"]) as c:
        rev = c.put("greeting", "hello")
        c.get("greeting")            # 'hello'
        c.list("gr")                 # {'greeting': 'hello'}
        c.delete("greeting")         # True

Any node serves any request, so the client may start anywhere. Every answer
names the leader (header `X-Kvcluster-Leader`); the client remembers it in
`Client.leader` and sends the next request there, saving the follower's hop.
Serializable reads are the exception: they go to the endpoints in order (the
first one that answers, stickily), because such a read is served from the state
of the node asked. `Client([url])` thus reads one node's state with
`consistency="serializable"`; `prefer_leader=False` also keeps writes and
linearizable reads on the endpoints.

Retries. An operation is retried across nodes (the leader first if known, then
the endpoints round-robin, with a small capped exponential backoff once every
node has been tried) until `timeout` seconds have passed; each attempt waits at
most `request_timeout`. Reads have no side effects and are simply retried.
Writes carry a session, `client_id` plus a `seq` that grows by one per write; a
retry of a write reuses its seq, so however many attempts reach the cluster, the
servers apply it once (Raft thesis, section 6.3). The client opens its session
(one committed entry) at its first write; the cluster expires sessions idle for
its `session_ttl` (5 minutes by default). A write whose session the cluster no
longer holds is never applied as new: the client opens a fresh session and
sends it again if no earlier attempt can have reached the cluster, and raises
`OutcomeUnknown` if one may have. When the client gives up it says whether the
write may have taken effect: see `kvcluster.errors`.

Threads. A Client is not thread-safe: use one per thread. (Its session is also a
promise to the servers that writes come one at a time, in seq order; two
threads writing through one Client could have a write refused as stale.) Two
live Clients must never share a `client_id`.

etcd's v3 API. `txn`/`cas`, the lease methods, `put(..., lease=id)` and
`watch` use the nodes' `/v3` routes (etcd's JSON gateway), so they work
against etcd 3.4 too; see `kvcluster.client_etcd` for what they return and
why a /v3 write is never sent twice.

    with Client(endpoints) as c:
        c.cas("config/colour", None, "blue")          # True: created
        with c.lease_grant(10) as lease, lease.keep_alive_forever():
            c.put("service/a", "10.0.0.7", lease=lease.id)
        with c.watch("config/", prefix=True, start_revision=1) as w:
            for event in w: ...                        # WatchEvent(type="PUT", ...)

Proxies. The client talks to the nodes directly: it ignores the HTTP(S)_PROXY
environment variables and ~/.netrc (`requests.Session.trust_env` is off).
"""

from __future__ import annotations

import builtins
import json
import random
import socket
import time
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import quote, urlencode, urljoin, urlsplit

import requests
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import MaxRetryError

from . import __version__
from . import client_etcd as etcd
from .client_etcd import (
    Compare,
    Delete,
    Get,
    KeyValue,
    Lease,
    LeaseStatus,
    Op,
    Put,
    StreamConfig,
    Txn,
    TxnResult,
    Watch,
)
from .errors import KvClusterError, OutcomeUnknown, RequestError, Unavailable

__all__ = [
    "Client",
    "Compare",
    "Delete",
    "Get",
    "KeyValue",
    "Lease",
    "LeaseStatus",
    "Put",
    "Txn",
    "TxnResult",
    "Watch",
]

LEADER_HEADER = "X-Kvcluster-Leader"
CONSISTENCY = ("linearizable", "serializable")
MAX_REDIRECTS = 5
# 503 error codes that promise the request was not applied.
NOT_APPLIED_CODES = frozenset({"no_leader", "not_leader", "unavailable", "shutting_down"})
BACKOFF_FIRST = 0.05  # seconds; doubled after every full round of endpoints
BACKOFF_MAX = 0.5
UNRESOLVED = "host name not found"  # an endpoint whose name does not resolve

# Exceptions raised before a single byte of the request could reach a server.
_NOT_SENT = (
    requests.exceptions.ConnectTimeout,
    requests.exceptions.SSLError,
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
)


class _AttemptFailed(Exception):
    """One attempt failed; `maybe_applied` if it may have taken effect anyway."""

    def __init__(self, description: str, maybe_applied: bool, refused: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.maybe_applied = maybe_applied
        self.refused = refused  # no connection could be made at all


def _normalize(url: str) -> str:
    """'127.0.0.1:7001/' -> 'http://127.0.0.1:7001'."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) endpoint URL: {url!r}")
    return url


def _quote_key(key: str) -> str:
    """Percent-encode a key as one path segment (keys may hold '/', spaces, any UTF-8)."""
    if not isinstance(key, str):
        raise TypeError(f"a key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("a key must not be empty")
    segment = quote(key, safe="")
    if segment in (".", ".."):
        # A path segment '.' or '..' would be resolved away by URL normalization.
        segment = segment.replace(".", "%2E")
    return segment


def _lease_id(lease_id: int) -> int:
    if isinstance(lease_id, bool) or not isinstance(lease_id, int) or not 0 < lease_id < 1 << 63:
        raise ValueError(f"a lease id is an integer from 1 to 2**63-1, got {lease_id!r}")
    return lease_id


def _lease_gone(lease_id: int, op: str) -> RequestError:
    message = etcd.ERR_LEASE_NOT_FOUND
    return RequestError(
        f"{op}: lease {lease_id} does not exist (it expired or was revoked): grant a new one",
        status=404,
        error="lease_not_found",
        server_message=message,
    )


def _check_consistency(consistency: str) -> str:
    if consistency not in CONSISTENCY:
        raise ValueError(f"consistency must be one of {CONSISTENCY}, got {consistency!r}")
    return consistency


def _describe_exception(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "no answer in time (timed out after sending the request)"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    reason: BaseException | None = exc
    seen = 0
    while reason is not None and seen < 8:  # look for the socket error under the wrappers
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, socket.gaierror):
            return UNRESOLVED
        if isinstance(reason, MaxRetryError) and reason.reason is not None:
            reason = reason.reason
        elif reason.args and isinstance(reason.args[0], BaseException):
            reason = reason.args[0]
        else:
            reason = reason.__cause__ or reason.__context__
        seen += 1
    text = str(exc.args[0] if exc.args else exc)
    if "refused" in text.lower():
        return "connection refused"
    return f"{type(exc).__name__}: {text}"


class Client:
    """A kvcluster client (one per thread; see the module docstring).

    `endpoints`: node base URLs ("http://host:port"; "host:port" and a
    comma-separated string are accepted too). `timeout`: how long one operation
    may take in all, retries included. `request_timeout`: how long one attempt
    may wait for an answer. `client_id`: a session opened with POST
    /v1/sessions to number writes in (by default the client opens its own at
    its first write, and a new one when the cluster has expired it; never share
    one between live clients).
    `token`: sent as `Authorization: Bearer <token>`, needed by membership
    changes. For https endpoints, `ca`: the CA file the nodes' certificates
    must come from (default: the system's CAs); `cert` and `key`: this
    client's own certificate and key files, for a cluster that asks clients
    for one (`--client-cert-auth`) or for admin routes of a TLS cluster, which
    need a certificate from its peer CA (`key` may be omitted if `cert` holds
    both). `prefer_leader`: send requests to the remembered leader (default);
    False keeps using the endpoints in order, e.g. to measure follower reads.
    `unreachable_timeout`: give up after this many seconds (and one try of
    every endpoint) if no connection could be made at all, every one refused
    or its host name unknown, as a command line tool wants; None (default):
    keep trying for `timeout`, as while nodes restart.

    Every operation raises `RequestError` if the cluster rejects it (not
    retried), `Unavailable` if it gave up and nothing took effect, and
    `OutcomeUnknown` if it gave up on a write that may have taken effect.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 10.0,
        request_timeout: float = 2.0,
        client_id: str | None = None,
        token: str | None = None,
        prefer_leader: bool = True,
        unreachable_timeout: float | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        normalized: list[str] = []
        for endpoint in endpoints:
            if endpoint.strip():
                url = _normalize(endpoint)
                if url not in normalized:
                    normalized.append(url)
        if not normalized:
            raise ValueError("a Client needs at least one endpoint, e.g. 'http://127.0.0.1:7001'")
        if timeout <= 0 or request_timeout <= 0:
            raise ValueError("timeout and request_timeout must be positive")
        self.endpoints: list[str] = normalized
        self.timeout = float(timeout)
        self.request_timeout = float(request_timeout)
        # A retry is only started with at least this much time left before the deadline.
        self._min_attempt = min(self.request_timeout, max(0.1, self.request_timeout / 4))
        self.client_id: str | None = client_id  # None: open a session at the next write
        self.prefer_leader = prefer_leader
        self.unreachable_timeout = unreachable_timeout
        self.leader: str | None = None  # the remembered leader's base URL
        self._leader_hint: str | None = None  # the raw header value `leader` came from
        self._seq = 0
        self._next = 0  # index of the endpoint to use when the leader is unknown
        self._random = random.Random()
        self._token = token
        self._session = requests.Session()
        self._session.trust_env = False
        if key is not None and cert is None:
            raise ValueError("key= was given without cert= (the certificate it belongs to)")
        self._tls = (ca, cert, key)
        self._verify: bool | str = ca if ca is not None else True
        self._session.verify = self._verify
        if cert is not None:
            self._session.cert = (cert, key) if key is not None else cert
        headers = {"User-Agent": f"kvcluster-client/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._headers = headers
        self._json_headers = {**headers, "Content-Type": "application/json"}

    # ------------------------------------------------------------------ public API

    @property
    def seq(self) -> int:
        """The seq of this client's last write (0 before the first)."""
        return self._seq

    def put(self, key: str, value: str, *, lease: int = 0) -> int:
        """Set `key` to `value`; return the store revision of the write.

        With `lease` (an id from `lease_grant`) the key is attached to that
        lease and deleted with it. Such a put goes through etcd's /v3 API,
        which has no sessions: it is sent again only if no attempt can have
        reached the cluster, else it raises OutcomeUnknown.
        """
        if not isinstance(value, str):
            raise TypeError(f"a value must be a str, got {type(value).__name__}")
        if lease:
            body = Put(key, value, lease=_lease_id(lease)).wire()["request_put"]
            data = self._v3("/v3/kv/put", body, f"put {key!r}", resend=False)
            return etcd.header_revision(data)
        path = "/v1/kv/" + _quote_key(key)
        data = self._write("PUT", path, {"value": value}, f"put {key!r}")
        return self._field(data, "revision", int)

    def get(self, key: str, *, consistency: str = "linearizable") -> str | None:
        """The value of `key`, or None if it does not exist."""
        kv = self.get_kv(key, consistency=consistency)
        return None if kv is None else kv.value

    def get_kv(self, key: str, *, consistency: str = "linearizable") -> KeyValue | None:
        """`key`'s value with its revisions, or None if it does not exist."""
        path = f"/v1/kv/{_quote_key(key)}?consistency={_check_consistency(consistency)}"
        local = consistency == "serializable"
        data = self._call("GET", path, None, f"get {key!r}", not_found_ok=True, local=local)
        if data.get("error") == "not_found":
            return None
        try:
            return KeyValue(
                data["key"],
                data["value"],
                data["create_revision"],
                data["mod_revision"],
                data["version"],
                data["revision"],
            )
        except (KeyError, TypeError) as exc:
            raise self._malformed(data, exc) from None

    def delete(self, key: str) -> bool:
        """Delete `key`; True if it existed."""
        path = "/v1/kv/" + _quote_key(key)
        data = self._write("DELETE", path, {}, f"delete {key!r}")
        return bool(self._field(data, "deleted", int))

    def list(
        self, prefix: str = "", *, limit: int | None = None, consistency: str = "linearizable"
    ) -> dict[str, str]:
        """The keys starting with `prefix` (at most `limit`) and their values, ordered by key.

        A node answers at most a page (10,000 keys or about 4 MiB); this reads
        page after page. Each page is linearizable on its own, not the whole
        list: keys written meanwhile may or may not be in it (for one revision
        throughout, use `txn` with a `Get` range, or /v3/kv/range at a revision).
        """
        if not isinstance(prefix, str):
            raise TypeError(f"a prefix must be a str, got {type(prefix).__name__}")
        query: dict[str, str] = {"consistency": _check_consistency(consistency)}
        if prefix:
            query["prefix"] = prefix
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        items: dict[str, str] = {}
        while True:
            if limit is not None:
                query["limit"] = str(limit - len(items))
            path = "/v1/kv?" + urlencode(query, quote_via=quote)
            data = self._call(
                "GET", path, None, f"list {prefix!r}", local=consistency == "serializable"
            )
            try:
                page = [(kv["key"], kv["value"]) for kv in data["kvs"]]
                more = bool(data.get("more")) and bool(page)
            except (KeyError, TypeError) as exc:
                raise self._malformed(data, exc) from None
            items.update(page)
            if not more or (limit is not None and len(items) >= limit):
                return dict(sorted(items.items()))
            query["after"] = max(key for key, _ in page)

    def status(self, endpoint: str | None = None) -> dict[str, Any]:
        """A node's status: `endpoint`'s (one attempt), or any node's (with retries)."""
        if endpoint is None:
            return self._call("GET", "/v1/status", None, "status")
        base = _normalize(endpoint)
        deadline = time.monotonic() + min(self.timeout, self.request_timeout)
        try:
            status, data = self._attempt(base, "GET", "/v1/status", None, deadline)
        except _AttemptFailed as failed:
            hint = " is that node running?" if failed.refused else ""
            raise Unavailable(
                f"could not get the status of {base}: {failed.description};{hint}",
                op="status",
                attempts=1,
                failures={base: failed.description},
            ) from None
        if status >= 300:
            if 400 <= status < 500:
                raise self._request_error(base, status, data, "status", known_outcome=True)
            description = self._describe_status(status, data)
            raise Unavailable(
                f"could not get the status of {base}: {description}",
                op="status",
                attempts=1,
                failures={base: description},
            )
        return data

    def remove_member(self, node_id: str) -> dict[str, Any]:
        """Remove node `node_id` from the cluster (needs the token); return the new members.

        Removal is retried like a write, but without a session: if an earlier
        attempt timed out and a retry then finds `node_id` is no longer a member,
        the RequestError (404) has `known_outcome` False — the earlier attempt
        most likely removed it.
        """
        path = "/v1/members/" + quote(node_id, safe="")
        return self._call("DELETE", path, None, f"remove member {node_id!r}", write=True)

    # ------------------------------------------------------------------ etcd's v3 API

    def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """If every `compare` holds, run `success`, else `failure`: atomically,
        at one revision (POST /v3/kv/txn).

            c.txn([Compare("k", "value", "==", "old")], [Put("k", "new")], [Get("k")])

        A txn that writes is never sent twice (see the module docstring of
        kvcluster.client_etcd): OutcomeUnknown if an attempt may have reached
        the cluster unanswered. One that only reads is retried like a read.
        """
        body = etcd.txn_body(compare, success, failure)
        writes = not (etcd.read_only(success) and etcd.read_only(failure))
        data = self._v3("/v3/kv/txn", body, "txn", resend=not writes, write=writes)
        return etcd.parse_txn(data)

    def cas(self, key: str, expected: str | None, value: str) -> bool:
        """Set `key` to `value` if it holds `expected` (None: if it does not
        exist). True if it was set, False if the key held something else.

        Never sent twice: a retry of a CAS that was applied would answer False
        and lie. OutcomeUnknown says an attempt may have been applied.
        """
        if expected is None:
            condition = Compare(key, "version", "==", 0)
        else:
            condition = Compare(key, "value", "==", expected)
        return self.txn([condition], [Put(key, value)]).succeeded

    def lease_grant(self, ttl: int, lease_id: int = 0) -> Lease:
        """A new lease of `ttl` seconds (the cluster may raise a very short TTL
        to its minimum); `lease_id` 0 lets the cluster pick the id."""
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise ValueError(f"a lease TTL is a whole number of seconds >= 1, got {ttl!r}")
        body: dict[str, Any] = {"TTL": ttl}
        if lease_id:
            body["ID"] = _lease_id(lease_id)
        # A grant sent twice leaves at worst an unused lease, which expires.
        data = self._v3("/v3/lease/grant", body, f"grant a {ttl} s lease", write=True)
        granted = etcd.number(data.get("ID"))
        if not granted:
            raise self._malformed(data, KeyError("ID"))
        return Lease(self, granted, etcd.number(data.get("TTL")))

    def lease(self, lease_id: int) -> Lease:
        """A handle on an existing lease (to keep it alive or revoke it)."""
        status = self.lease_time_to_live(lease_id)
        if status is None:
            raise _lease_gone(lease_id, "lease")
        return Lease(self, status.id, status.granted_ttl)

    def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease: the keys attached to it are deleted. Raises
        RequestError (error "lease_not_found") if there is no such lease."""
        op = f"revoke lease {lease_id}"
        try:
            self._v3("/v3/lease/revoke", {"ID": _lease_id(lease_id)}, op, write=True)
        except RequestError as exc:
            if exc.error != "lease_not_found":
                raise
            if not exc.known_outcome:
                return  # an earlier attempt of ours revoked it
            raise _lease_gone(lease_id, op) from None

    def lease_keep_alive(self, lease_id: int) -> int:
        """Renew a lease once; return its TTL. Raises RequestError (error
        "lease_not_found") if it has expired or was revoked."""
        op = f"keep lease {lease_id} alive"
        data = self._v3("/v3/lease/keepalive", {"ID": _lease_id(lease_id)}, op, write=True)
        result = data.get("result", data)
        ttl = etcd.number(result.get("TTL")) if isinstance(result, dict) else 0
        if ttl <= 0:
            raise _lease_gone(lease_id, op)
        return ttl

    def lease_time_to_live(self, lease_id: int, *, keys: bool = False) -> LeaseStatus | None:
        """Seconds left on a lease (and its keys, if `keys`); None if there is none."""
        body: dict[str, Any] = {"ID": _lease_id(lease_id)}
        if keys:
            body["keys"] = True
        data = self._v3("/v3/lease/timetolive", body, f"time to live of lease {lease_id}")
        ttl = etcd.number(data.get("TTL"))
        if ttl < 0:
            return None
        return LeaseStatus(
            id=etcd.number(data.get("ID")) or lease_id,
            ttl=ttl,
            granted_ttl=etcd.number(data.get("grantedTTL")),
            keys=tuple(etcd.decode(k) for k in data.get("keys") or ()),
        )

    def leases(self) -> builtins.list[int]:
        """The ids of every lease, soonest to expire first."""
        data = self._v3("/v3/lease/leases", {}, "list leases")
        items = data.get("leases") or ()
        return [etcd.number(item.get("ID")) for item in items if isinstance(item, dict)]

    def watch(
        self,
        key: str,
        *,
        prefix: bool = False,
        range_end: str | None = None,
        start_revision: int | None = None,
        prev_kv: bool = False,
        no_put: bool = False,
        no_delete: bool = False,
        progress_notify: bool = False,
        idle_timeout: float | None = etcd.IDLE_PROBE,
        max_message_bytes: int = etcd.MAX_WATCH_MESSAGE,
    ) -> Watch:
        """Watch `key` (every key under it with `prefix`, or [key, range_end))
        from `start_revision` (None: changes after now); see `Watch`.

        Returns once a node has created the watch, so a write made after this
        returns is seen. Watches go to the endpoints in order (any node serves
        them, from what it has applied), not to the leader. `idle_timeout`:
        after this many silent seconds, check that the node still answers and
        move to another if not (None: never). `max_message_bytes` bounds one
        message (every event of one revision).
        """
        create: dict[str, Any] = etcd.key_range(key, prefix, range_end)
        filters = [name for name, on in (("NOPUT", no_put), ("NODELETE", no_delete)) if on]
        if filters:
            create["filters"] = filters
        if prev_kv:
            create["prev_kv"] = True
        if progress_notify:
            create["progress_notify"] = True
        config = StreamConfig(
            endpoints=tuple(self.endpoints),
            timeout=self.timeout,
            request_timeout=self.request_timeout,
            unreachable_timeout=self.unreachable_timeout,
            headers={k: v for k, v in self._headers.items() if k != "Accept"},
            tls=self._tls,
        )
        return Watch(
            config,
            create,
            start_revision or 0,
            idle_timeout=idle_timeout,
            max_message_bytes=max_message_bytes,
        )

    def _v3(
        self,
        path: str,
        body: dict[str, Any],
        op: str,
        *,
        write: bool = False,
        resend: bool = True,
    ) -> dict[str, Any]:
        return self._call("POST", path, body, op, write=write, etcd_api=True, resend=resend)

    def _clone(self) -> Client:
        """A new Client with this one's settings, for another thread."""
        return Client(
            self.endpoints,
            timeout=self.timeout,
            request_timeout=self.request_timeout,
            token=self._token,
            prefer_leader=self.prefer_leader,
            unreachable_timeout=self.unreachable_timeout,
            ca=self._tls[0],
            cert=self._tls[1],
            key=self._tls[2],
        )

    def open_session(self) -> str:
        """Open a new session for this client's writes and return its id (done
        for you at the first write, and when the cluster expired the last one)."""
        nonce = {"nonce": uuid.uuid4().hex}  # one per open: its retries are appended once
        try:
            data = self._call("POST", "/v1/sessions", nonce, "open a session", write=True)
        except OutcomeUnknown as exc:
            # A session opened without our hearing of it is harmless (it expires
            # unused), and no write of ours went out: to the caller, nothing happened.
            raise Unavailable(
                exc.message, op=exc.op, attempts=exc.attempts, failures=exc.failures
            ) from exc
        client_id = data.get("client_id")
        if not isinstance(client_id, str) or not client_id:
            raise self._malformed(data, KeyError("client_id"))
        self.client_id, self._seq = client_id, 0
        return client_id

    def close(self) -> None:
        """Close the keep-alive connections. The client may not be used afterwards."""
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Client(endpoints={self.endpoints!r}, leader={self.leader!r}, "
            f"client_id={self.client_id!r}, seq={self._seq})"
        )

    # ------------------------------------------------------------------ retries

    def _write(self, method: str, path: str, fields: dict[str, Any], op: str) -> dict[str, Any]:
        """A put or delete in this client's session, retried under one seq."""
        if self.client_id is None:
            self.open_session()
        self._seq += 1
        body = {**fields, "client_id": self.client_id, "seq": self._seq}
        try:
            return self._call(method, path, body, op, write=True)
        except RequestError as exc:
            if exc.error != "session_expired":
                raise
            expired = self.client_id
            self.client_id = None  # the next write opens a new session
            if not exc.known_outcome:
                raise OutcomeUnknown(
                    f"{op}: the cluster expired session {expired!r} while the write was "
                    "being retried, so it cannot tell whether an earlier attempt was "
                    "applied. Read the key before writing again.",
                    op=op,
                ) from exc
        # Refused on its first delivery: nothing was applied, so it is safe to send
        # again in a new session (with the rest of the time budget it is a new call).
        self.open_session()
        self._seq = 1
        body = {**fields, "client_id": self.client_id, "seq": self._seq}
        return self._call(method, path, body, op, write=True)

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        op: str,
        *,
        write: bool = False,
        not_found_ok: bool = False,
        local: bool = False,
        etcd_api: bool = False,
        resend: bool = True,
    ) -> dict[str, Any]:
        """Run one operation with retries; return the JSON body of its answer.

        The same `body` (so the same client_id and seq) goes with every attempt.
        `local` (serializable reads): ask the endpoints, never the leader — such a
        read is served from the state of the node asked, which is the point of it.
        `etcd_api`: a /v3 route, whose errors are etcd's. `resend` False: a write
        without a session, never sent again once an attempt may have reached the
        cluster (it would be applied twice): it raises OutcomeUnknown then.
        """
        leader_first = self.prefer_leader and not local
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        start = time.monotonic()
        deadline = start + self.timeout
        target = self._first_target(leader_first)
        attempts = 0
        since_backoff = 0
        backoff = BACKOFF_FIRST
        maybe_applied = False
        all_refused = True
        failures: dict[str, str] = {}
        while True:
            attempts += 1
            since_backoff += 1
            leader_before = self.leader
            try:
                status, data = self._attempt(target, method, path, payload, deadline)
            except _AttemptFailed as failed:
                description = failed.description
                maybe_applied = maybe_applied or failed.maybe_applied
                all_refused = all_refused and failed.refused
            else:
                if status < 300:
                    return data
                if etcd_api:
                    status, data = etcd.etcd_error(status, data)
                if (
                    status == 404
                    and not_found_ok
                    and data.get("error") == "not_found"
                    and "revision" in data  # the key is absent (not: there is no such route)
                ):
                    return data
                code = data.get("error")
                all_refused = False
                if status in (408, 429) or (status == 503 and code in NOT_APPLIED_CODES):
                    pass  # not applied: retry
                elif 300 <= status < 500:
                    raise self._request_error(
                        target, status, data, op, known_outcome=not maybe_applied
                    )
                else:  # a 504 timeout, a 503 that promises nothing...: it may have happened
                    maybe_applied = True
                description = self._describe_status(status, data)
                if status not in (502, 503, 504):  # 500 & co: a bug in the node
                    self._internal_error(op, target, description, write)

            failures.pop(target, None)
            failures[target] = description  # the latest failure last
            if target == self.leader and self.leader == leader_before:
                self.leader = self._leader_hint = None  # it failed, naming no other: forget it
            if write and maybe_applied and not resend:
                self._not_sent_again(op, attempts, time.monotonic() - start, failures)
            chase = leader_first and self.leader is not None and self.leader != target
            target = self._next_target(target, leader_first)
            now = time.monotonic()
            if not chase and since_backoff >= len(self.endpoints):
                # Every node had its chance: wait a little before the next round.
                delay = backoff * (0.5 + 0.5 * self._random.random())
                if now + delay + self._min_attempt > deadline:
                    now = deadline
                else:
                    time.sleep(delay)
                    now = time.monotonic()
                backoff = min(backoff * 2, BACKOFF_MAX)
                since_backoff = 0
            # An attempt cut short by the deadline would likely time out, and turn a write
            # known not to be applied into one that may be: after a first try of every
            # endpoint, do not start one with little time left.
            first_round = attempts < len(self.endpoints)
            unreachable = (
                all_refused
                and not first_round
                and self.unreachable_timeout is not None
                and now - start >= self.unreachable_timeout
            )
            if (
                now >= deadline
                or (not first_round and deadline - now < self._min_attempt)
                or unreachable
            ):
                self._give_up(
                    op, write and maybe_applied, all_refused, attempts, now - start, failures
                )

    def _first_target(self, leader_first: bool) -> str:
        if leader_first and self.leader is not None:
            return self.leader
        return self.endpoints[self._next % len(self.endpoints)]

    def _next_target(self, failed: str, leader_first: bool) -> str:
        """Where to go after `failed` failed: the leader if it is another node, else round-robin."""
        n = len(self.endpoints)
        if self.endpoints[self._next % n] == failed:
            self._next += 1
        if leader_first and self.leader is not None and self.leader != failed:
            return self.leader
        return self.endpoints[self._next % n]

    def _internal_error(self, op: str, target: str, description: str, write: bool) -> NoReturn:
        """A node failed with an internal error: a bug that a retry would hit again."""
        message = (
            f"{op} failed: {target} answered {description}; that is a bug in the node, see its log."
        )
        failures = {target: description}
        if write:
            raise OutcomeUnknown(
                message + " The write MAY HAVE TAKEN EFFECT: read it back before trying again.",
                op=op,
                attempts=1,
                failures=failures,
            )
        raise Unavailable(message, op=op, attempts=1, failures=failures)

    def _not_sent_again(
        self, op: str, attempts: int, elapsed: float, failures: dict[str, str]
    ) -> NoReturn:
        answers = "; ".join(f"{url}: {what}" for url, what in failures.items())
        raise OutcomeUnknown(
            f"{op} MAY HAVE TAKEN EFFECT: an attempt timed out or was cut off after it was "
            f"sent, and a /v3 write has no session that would make a second attempt "
            f"harmless, so it was not sent again. Read the keys it touches before trying "
            f"again. ({attempts} attempt(s) in {elapsed:.1f}s; last answer per node: {answers})",
            op=op,
            attempts=attempts,
            failures=failures,
        )

    def _give_up(
        self,
        op: str,
        maybe_applied: bool,
        all_refused: bool,
        attempts: int,
        elapsed: float,
        failures: dict[str, str],
    ) -> NoReturn:
        answers = "; ".join(f"{url}: {what}" for url, what in failures.items())
        summary = f"{attempts} attempt(s) in {elapsed:.1f}s; last answer per node: {answers}"
        if maybe_applied:
            raise OutcomeUnknown(
                f"{op} gave up after {self.timeout:g}s and MAY HAVE TAKEN EFFECT (an attempt "
                f"timed out or was cut off after it was sent). Read it back (or check the "
                f"members) before trying again. ({summary})",
                op=op,
                attempts=attempts,
                failures=failures,
            )
        if all_refused and all("SSLError" in why for why in failures.values()):
            message = (
                f"{op} failed: the TLS handshake with {self.endpoints} failed: give the CA "
                f"the nodes' certificates come from (Client(ca=...), --cacert), and a "
                f"certificate of your own if the cluster asks for one (cert=, --cert/--key). "
                f"({summary})"
            )
        elif all_refused:
            message = (
                f"{op} failed: no node answered at {self.endpoints}: is the cluster running? "
                f"({summary})"
            )
        else:
            message = (
                f"{op} failed: no node could serve it within {self.timeout:g}s; it did not take "
                f"effect and is safe to retry. Is a majority of the nodes up and able to elect "
                f"a leader? (Client.status(endpoint) shows each node's view.) ({summary})"
            )
        raise Unavailable(message, op=op, attempts=attempts, failures=failures)

    # ------------------------------------------------------------------ one attempt

    def _attempt(
        self, base: str, method: str, path: str, payload: bytes | None, deadline: float
    ) -> tuple[int, dict[str, Any]]:
        """Send one request to `base`, following up to MAX_REDIRECTS 307/308 redirects.

        Returns (status, JSON body) for any answer that is not a redirect;
        raises _AttemptFailed if no answer came.
        """
        url = base + path
        headers = self._headers if payload is None else self._json_headers
        for _hop in range(MAX_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # Only reachable between redirect hops: the redirecting node did not apply it.
                raise _AttemptFailed("out of time while following redirects", False)
            wait = min(self.request_timeout, remaining)
            # Built by hand, not with requests' prepare(): that costs a tenth of a
            # request, and its URL normalization would resolve a '.' or '..' key away.
            prepared = requests.PreparedRequest()
            prepared.method = method
            prepared.url = url
            prepared.headers = CaseInsensitiveDict(headers)
            prepared.headers["Content-Length"] = str(len(payload)) if payload else "0"
            prepared.body = payload
            try:
                # The session's adapter (its keep-alive pool) directly: Session.send adds
                # only hooks and cookies, which the nodes do not use.
                adapter = self._session.get_adapter(url)
                resp = adapter.send(
                    prepared, timeout=wait, verify=self._verify, cert=self._session.cert
                )
                content = resp.content
            except requests.RequestException as exc:
                raise self._classify(exc) from None
            hint = resp.headers.get(LEADER_HEADER)
            if hint and hint != self._leader_hint:
                try:
                    self.leader = _normalize(hint)
                    self._leader_hint = hint
                except ValueError:
                    pass
            status = resp.status_code
            if status in (307, 308):
                location = resp.headers.get("Location")
                if not location:
                    raise _AttemptFailed(f"{status} redirect without a Location header", False)
                url = urljoin(url, location)
                if not hint:
                    parts = urlsplit(url)
                    self.leader = f"{parts.scheme}://{parts.netloc}"
                continue
            try:
                data = json.loads(content) if content else {}
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                if status < 300:
                    raise _AttemptFailed(
                        f"{status} with a body that is not a JSON object: {content[:100]!r}",
                        True,
                    ) from None
                text = content[:200].decode("utf-8", "replace")
                data = {"error": None, "message": text}
            return status, data
        raise _AttemptFailed(f"more than {MAX_REDIRECTS} redirects (last to {url})", False)

    @staticmethod
    def _classify(exc: requests.RequestException) -> _AttemptFailed:
        description = _describe_exception(exc)
        not_sent = isinstance(exc, _NOT_SENT) or (
            isinstance(exc, requests.exceptions.ConnectionError)
            and bool(exc.args)
            and isinstance(exc.args[0], MaxRetryError)  # the connection was never made
        )
        # A TLS handshake that failed (a CA we do not trust, a certificate the
        # node wants) fails the same way every time: as good as refused.
        refused = not_sent and (
            description in ("connection refused", UNRESOLVED)
            or isinstance(exc, requests.exceptions.SSLError)
        )
        return _AttemptFailed(description, maybe_applied=not not_sent, refused=refused)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _describe_status(status: int, data: dict[str, Any]) -> str:
        code = data.get("error")
        message = data.get("message")
        text = f"HTTP {status}"
        if code:
            text += f" {code}"
        if message:
            text += f" ({message})"
        return text

    @staticmethod
    def _request_error(
        endpoint: str, status: int, data: dict[str, Any], op: str, *, known_outcome: bool
    ) -> RequestError:
        code = str(data.get("error") or f"http_{status}")
        server_message = str(data.get("message") or "")
        message = f"{op} was rejected by {endpoint}: HTTP {status} {code}"
        if server_message:
            message += f": {server_message}"
        if not known_outcome:
            message += " (an earlier attempt may have taken effect)"
        return RequestError(
            message,
            status=status,
            error=code,
            server_message=server_message,
            endpoint=endpoint,
            known_outcome=known_outcome,
        )

    @staticmethod
    def _malformed(data: dict[str, Any], exc: Exception) -> KvClusterError:
        return KvClusterError(
            f"unexpected answer from the cluster ({exc!r} in {str(data)[:200]}); "
            "is every node running the same kvcluster version?",
            known_outcome=False,
        )

    def _field(self, data: dict[str, Any], name: str, kind: type[int]) -> int:
        value = data.get(name)
        if not isinstance(value, kind):
            raise self._malformed(data, KeyError(name))
        return value
