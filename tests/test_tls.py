"""TLS (issue 15): who may speak to a node's port, proved on real sockets and processes.

Four layers, each where its behaviour lives:

- the HTTP stack in-process (on asyncio and on uvloop), with a node's own
  context (`NodeConfig.server_tls`, `issuer_check`): an unknown CA fails the
  handshake, a token route also needs a peer-CA certificate (refused before
  the body is read), plain HTTP is never routed, and connections still
  shaking hands count against the connection limit and time out;
- `NodeConfig`: every TLS mistake is a ConfigError naming its setting;
- a real `Cluster(3, tls=True)`: a forged peer, even with the right token,
  cannot deliver a Raft message that would raise the term; the cluster's own
  certificate can (so the refusal is the certificate's doing);
- the command line end to end: `kvcluster certs`, `serve` over https,
  `put`/`get --cacert`.

Clients are blocking `ssl` sockets (in a thread for the in-process server), so
every byte and every handshake failure is the test's to see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from loops import both_loops, run_loop
from served import DEADLINE, ServedNode, clean_env, free_port
from test_cli import _read_until, _stop_up, kvcluster
from test_http_server import until

from kvcluster.cluster import Cluster
from kvcluster.errors import KvClusterError
from kvcluster.raft import ConfigError, Message, MessageType
from kvcluster.server.codec import encode_batch
from kvcluster.server.config import NodeConfig
from kvcluster.server.http import HttpServer, Limits, Reply, Request, Route
from kvcluster.tls import CertificateAuthority, client_context, issuer_check, write_key_pair

TOKEN = "tls-test-token"
READ_TIMEOUT = 10.0  # one read or handshake; generous for a busy 2-core machine
SCENARIO_TIMEOUT = 60.0
LIMITS = Limits(head_timeout=5.0, idle_timeout=30.0, body_timeout=10.0)
FIFTY_MB = 50 << 20
LOCAL = "127.0.0.1"


# ---------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    """A peer CA with a node certificate and a peer certificate, and another CA
    whose certificate nobody here trusts."""

    ca: str  # the peer CA's certificate (what a node trusts)
    server: tuple[str, str]  # the node's certificate and key (peer CA, 127.0.0.1)
    peer: tuple[str, str]  # another certificate of the peer CA: a peer's
    foreign: tuple[str, str]  # from the other CA
    other_ca: str

    def node_config(self, **settings: Any) -> NodeConfig:
        """A TLS node's configuration, with `settings` changed."""
        base: dict[str, Any] = {
            "name": "n0",
            "token": TOKEN,
            "initial_members": {"n0": f"https://{LOCAL}:2379"},
            "cert_file": self.server[0],
            "key_file": self.server[1],
            "peer_trusted_ca_file": self.ca,
        }
        base.update(settings)
        return NodeConfig(**base)


def issue(ca: CertificateAuthority, name: str, where: Path) -> tuple[str, str]:
    certificate, key = ca.issue(name, [LOCAL, "localhost"])
    cert_file, key_file = where / f"{name}.pem", where / f"{name}.key"
    write_key_pair(certificate, key, cert_file, key_file)
    return str(cert_file), str(key_file)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    peer_ca = CertificateAuthority.create("test peer CA")
    other_ca = CertificateAuthority.create("some other CA")
    peer_ca.certificate_file(where / "ca.pem")
    other_ca.certificate_file(where / "other-ca.pem")
    return Pki(
        ca=str(where / "ca.pem"),
        server=issue(peer_ca, "server", where),
        peer=issue(peer_ca, "peer", where),
        foreign=issue(other_ca, "foreign", where),
        other_ca=str(where / "other-ca.pem"),
    )


# ---------------------------------------------------------------------- the in-process server


@dataclass
class App:
    """A client route and a token route; what their handlers saw."""

    calls: list[Request] = field(default_factory=list)

    def router(self, method: str, path: str) -> Route | None:
        if path == "/client":
            return Route(self.echo)
        if path == "/peer":
            # A body limit above FIFTY_MB: a 403 for it cannot come from the size check.
            return Route(self.echo, token=True, max_body=64 << 20)
        return None

    def echo(self, request: Request, reply: Reply) -> None:
        self.calls.append(request)
        body = {"path": request.path, "peer": request.peer, "body": len(request.body)}
        reply(200, json.dumps(body).encode(), ())


@dataclass
class Served:
    server: HttpServer
    port: int
    app: App


@contextlib.asynccontextmanager
async def serving(pki: Pki, limits: Limits = LIMITS) -> Any:
    """An HttpServer with the TLS a node builds from its configuration."""
    config = pki.node_config()
    app = App()
    server = HttpServer(
        app.router,
        token=TOKEN,
        limits=limits,
        tls=config.server_tls(),
        peer_certificate=issuer_check(pki.ca),
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOCAL, 0))
    sock.listen(16)
    await server.listen([sock])
    try:
        yield Served(server, sock.getsockname()[1], app)
    finally:
        server.close()
    await until(lambda: server.connections == 0, "the connections to close")


def run(pki: Pki, scenario: Callable[[Served], Any], limits: Limits = LIMITS) -> None:
    async def main() -> None:
        async with serving(pki, limits) as served:
            async with asyncio.timeout(SCENARIO_TIMEOUT):
                await scenario(served)

    run_loop(main())


# ---------------------------------------------------------------------- blocking clients


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    version: str | None = None  # the TLS version the connection used

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test", *headers]
    if not any(h.lower().startswith("content-length:") for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def read_answer(sock: socket.socket) -> Answer:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the connection closed without an answer: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("the connection closed inside an answer's body")
        body += chunk
    return Answer(int(lines[0].split(" ")[1]), headers, body[:length])


def over_tls(port: int, data: bytes, context: ssl.SSLContext) -> Answer:
    """One request over a new TLS connection, and its answer."""
    with (
        socket.create_connection((LOCAL, port), timeout=READ_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=LOCAL) as sock,
    ):
        sock.sendall(data)
        answer = read_answer(sock)
        answer.version = sock.version()
        return answer


def read_to_end(sock: socket.socket) -> bytes:
    """Everything until the server closes (a reset counts as closed)."""
    sock.settimeout(READ_TIMEOUT)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def assert_refused(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body[:300])
    body = answer.json()
    assert body["error"] == code, body
    assert answer.headers.get("connection") == "close", answer.headers
    return dict(body)


def tls11_client(ca: str) -> ssl.SSLContext:
    """A client that offers TLS 1.1 at most (OpenSSL 3 needs security level 0 for it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the versions are deprecated
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_verify_locations(ca)
    return context


def can_speak_tls11(pki: Pki) -> bool:
    """Whether this Python and OpenSSL complete a TLS 1.1 handshake at all, with
    a server that allows it (in memory): only then does a refusal by the node's
    server prove anything."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server.minimum_version = ssl.TLSVersion.TLSv1
        server.set_ciphers("DEFAULT:@SECLEVEL=0")
        server.load_cert_chain(*pki.server)
        client = tls11_client(pki.ca)
    except (ssl.SSLError, ValueError):
        return False
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    ends = [
        client.wrap_bio(c_in, c_out, server_hostname=LOCAL),
        server.wrap_bio(s_in, s_out, server_side=True),
    ]
    for _ in range(10):
        done = 0
        for end in ends:
            try:
                end.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == 2:
            return ends[0].version() == "TLSv1.1"
    return False


# ---------------------------------------------------------------------- 1. the HTTP stack


@both_loops
def test_a_certificate_from_another_ca_fails_the_handshake_and_nothing_is_routed(
    pki: Pki,
) -> None:
    foreign = client_context(pki.ca, *pki.foreign)

    async def scenario(s: Served) -> None:
        request = http("POST", "/peer", f"Authorization: Bearer {TOKEN}", body=b"[]")
        with pytest.raises(ssl.SSLError) as info:
            await asyncio.to_thread(over_tls, s.port, request, foreign)
        # The node's alert tells the client why (TLS 1.3: on its first read).
        assert "unknown ca" in str(info.value).lower(), info.value
        await until(lambda: s.server.refused["tls_handshake"] == 1, "the refusal to be counted")
        assert s.app.calls == []
        assert s.server.peers == 0

    run(pki, scenario)


@both_loops
def test_a_client_refused_at_the_handshake_still_reads_why_after_writing_more(
    pki: Pki,
) -> None:
    """TLS 1.3: the client's side of the handshake is done before the node has
    checked its certificate, so a client writes its request (urllib3: the head,
    then the body) into a connection the node has refused. The node's alert
    must still be what the client reads, not a reset on its next write (which
    requests reports as a bare "EOF occurred in violation of protocol")."""
    foreign = client_context(pki.ca, *pki.foreign)
    foreign.minimum_version = ssl.TLSVersion.TLSv1_3
    refused = threading.Event()
    head = http("POST", "/peer", f"Authorization: Bearer {TOKEN}", "Content-Length: 2")

    def head_then_body(port: int) -> None:
        with (
            socket.create_connection((LOCAL, port), timeout=READ_TIMEOUT) as raw,
            foreign.wrap_socket(raw, server_hostname=LOCAL) as sock,
        ):
            sock.sendall(head)
            assert refused.wait(READ_TIMEOUT), "the node never refused the certificate"
            sock.sendall(b"[]")
            read_answer(sock)

    async def scenario(s: Served) -> None:
        client = asyncio.create_task(asyncio.to_thread(head_then_body, s.port))
        await until(lambda: s.server.refused["tls_handshake"] == 1, "the refusal to be counted")
        refused.set()
        with pytest.raises(ssl.SSLError) as info:
            await client
        assert "unknown ca" in str(info.value).lower(), info.value
        assert s.app.calls == []

    run(pki, scenario)


@both_loops
def test_without_a_client_certificate_client_routes_work_and_token_routes_are_forbidden(
    pki: Pki,
) -> None:
    anonymous = client_context(pki.ca)

    async def scenario(s: Served) -> None:
        answer = await asyncio.to_thread(over_tls, s.port, http("GET", "/client"), anonymous)
        assert answer.status == 200 and answer.json() == {
            "path": "/client",
            "peer": False,
            "body": 0,
        }
        # The right token, no certificate, a 50 MB body announced and none sent:
        # refused on the head alone (waiting for the body would end in a 408).
        head = http(
            "POST", "/peer", f"Authorization: Bearer {TOKEN}", f"Content-Length: {FIFTY_MB}"
        )
        answer = await asyncio.to_thread(over_tls, s.port, head, anonymous)
        body = assert_refused(answer, 403, "forbidden")
        assert "certificate" in body["message"] and "peer" in body["message"], body
        assert [r.path for r in s.app.calls] == ["/client"]  # the token route never ran
        assert s.server.refused["forbidden"] == 1
        assert s.server.peers == 0

    run(pki, scenario)


@both_loops
def test_a_peer_certificate_and_the_token_reach_the_token_route(pki: Pki) -> None:
    peer = client_context(pki.ca, *pki.peer)

    async def scenario(s: Served) -> None:
        request = http("POST", "/peer", f"Authorization: Bearer {TOKEN}", body=b"x" * 1000)
        answer = await asyncio.to_thread(over_tls, s.port, request, peer)
        assert answer.status == 200, answer.body
        assert answer.json() == {"path": "/peer", "peer": True, "body": 1000}
        assert len(s.app.calls) == 1 and s.app.calls[0].peer
        assert s.server.refused["tls_handshake"] == 0

    run(pki, scenario)


@both_loops
def test_a_peer_certificate_with_the_wrong_token_is_unauthorized(pki: Pki) -> None:
    peer = client_context(pki.ca, *pki.peer)

    async def scenario(s: Served) -> None:
        request = http("POST", "/peer", "Authorization: Bearer not-the-token", body=b"[]")
        answer = await asyncio.to_thread(over_tls, s.port, request, peer)
        assert_refused(answer, 401, "unauthorized")
        answer = await asyncio.to_thread(over_tls, s.port, http("POST", "/peer", body=b"[]"), peer)
        assert_refused(answer, 401, "unauthorized")
        assert s.app.calls == []

    run(pki, scenario)


@both_loops
def test_plain_http_to_a_tls_port_gets_no_http_answer_and_is_not_routed(pki: Pki) -> None:
    def plain(port: int) -> bytes:
        with socket.create_connection((LOCAL, port), timeout=READ_TIMEOUT) as sock:
            sock.sendall(http("GET", "/client"))
            return read_to_end(sock)

    async def scenario(s: Served) -> None:
        got = await asyncio.to_thread(plain, s.port)
        assert b"HTTP/" not in got, got[:200]
        await until(lambda: s.server.refused["tls_handshake"] == 1, "the refusal to be counted")
        assert s.app.calls == []

    run(pki, scenario)


def partial_client_hello(pki: Pki) -> bytes:
    """The first half of a real ClientHello: a handshake begun and never finished."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    end = client_context(pki.ca).wrap_bio(incoming, outgoing, server_hostname=LOCAL)
    with contextlib.suppress(ssl.SSLWantReadError):
        end.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", hello[:10]  # a handshake record
    return hello[: len(hello) // 2]


@both_loops
def test_connections_still_shaking_hands_count_against_the_limit_and_time_out(pki: Pki) -> None:
    limits = Limits(max_connections=2, peer_reserve=0, head_timeout=1.0, idle_timeout=30.0)
    half_hello = partial_client_hello(pki)

    def connect(port: int, send: bytes = b"") -> socket.socket:
        sock = socket.create_connection((LOCAL, port), timeout=READ_TIMEOUT)
        if send:
            sock.sendall(send)
        return sock

    async def scenario(s: Served) -> None:
        silent = await asyncio.to_thread(connect, s.port)
        shaking = await asyncio.to_thread(connect, s.port, half_hello)
        try:
            await until(lambda: s.server.clients == 2, "both connections to be admitted")
            third = await asyncio.to_thread(connect, s.port)
            with third:
                assert await asyncio.to_thread(read_to_end, third) == b""
            # Counted at accept, not by a timeout: the limit was full.
            assert s.server.refused["connection_limit"] == 1
            # Neither finished a handshake: both are closed after head_timeout.
            for sock in (silent, shaking):
                assert await asyncio.to_thread(read_to_end, sock) == b""
            await until(lambda: s.server.clients == 0, "the connections to be forgotten")
            assert s.server.refused["idle"] == 2
            assert s.server.refused["tls_handshake"] == 0  # they timed out; nothing failed
        finally:
            silent.close()
            shaking.close()
        # The places are free again: a real client gets in.
        answer = await asyncio.to_thread(
            over_tls, s.port, http("GET", "/client"), client_context(pki.ca)
        )
        assert answer.status == 200
        assert s.app.calls and s.app.calls[0].path == "/client"

    run(pki, scenario, limits)


@both_loops
def test_the_server_speaks_tls_1_2_and_up_only(pki: Pki) -> None:
    tls12 = client_context(pki.ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    old = tls11_client(pki.ca) if can_speak_tls11(pki) else None

    async def scenario(s: Served) -> None:
        answer = await asyncio.to_thread(over_tls, s.port, http("GET", "/client"), tls12)
        assert answer.status == 200 and answer.version == "TLSv1.2"
        if old is not None:  # this OpenSSL can still try 1.1: the node must refuse it
            with pytest.raises(ssl.SSLError):
                await asyncio.to_thread(over_tls, s.port, http("GET", "/client"), old)
            await until(lambda: s.server.refused["tls_handshake"] == 1, "the refusal counted")
        assert [r.path for r in s.app.calls] == ["/client"]

    run(pki, scenario)


# ---------------------------------------------------------------------- 2. configuration


def refused(setting: str, says: str, build: Callable[[], object]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.setting == setting, info.value
    assert says in info.value.reason, info.value
    return info.value


def test_a_tls_configuration_that_works_is_accepted(pki: Pki) -> None:
    config = pki.node_config(client_cert_auth=True, trusted_ca_file=pki.other_ca)
    assert config.tls and config.scheme == "https"
    assert config.server_tls() is not None and config.peer_tls() is not None


def test_a_key_without_its_certificate_is_refused(pki: Pki) -> None:
    refused("key_file", "needs cert_file", lambda: pki.node_config(cert_file=None))


def test_a_certificate_without_its_key_is_refused(pki: Pki) -> None:
    refused("key_file", "is needed with cert_file", lambda: pki.node_config(key_file=None))


def test_tls_without_a_peer_ca_is_refused(pki: Pki) -> None:
    refused(
        "peer_trusted_ca_file",
        "is needed with TLS",
        lambda: pki.node_config(peer_trusted_ca_file=None),
    )


def test_client_cert_auth_without_a_client_ca_is_refused(pki: Pki) -> None:
    refused(
        "trusted_ca_file",
        "is needed with client_cert_auth",
        lambda: pki.node_config(client_cert_auth=True),
    )


@pytest.mark.parametrize(
    "setting", ["cert_file", "key_file", "peer_trusted_ca_file", "trusted_ca_file"]
)
def test_an_unreadable_file_is_refused_naming_its_setting_and_path(
    pki: Pki, tmp_path: Path, setting: str
) -> None:
    missing = str(tmp_path / "no-such.pem")
    extra = {"client_cert_auth": True, "trusted_ca_file": pki.ca}
    error = refused(setting, missing, lambda: pki.node_config(**{**extra, setting: missing}))
    assert "cannot read" in error.reason, error


def test_a_key_that_is_not_the_certificates_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError) as info:
        pki.node_config(key_file=pki.peer[1])  # the peer certificate's key
    assert info.value.setting in ("cert_file", "key_file"), info.value
    assert pki.server[0] in info.value.reason and pki.peer[1] in info.value.reason, info.value


@pytest.mark.parametrize("setting", ["initial_members", "join", "advertise_url"])
def test_http_urls_with_tls_are_refused(pki: Pki, setting: str) -> None:
    url = f"http://{LOCAL}:2379"
    every: dict[str, dict[str, Any]] = {
        "initial_members": {"initial_members": {"n0": url}},
        "join": {"initial_members": {}, "join": [url]},
        "advertise_url": {"initial_members": {}, "advertise_url": url},
    }
    changes = every[setting]
    refused(setting, "must be https:// URLs", lambda: pki.node_config(**changes))


def test_https_urls_without_tls_are_refused() -> None:
    refused(
        "initial_members",
        "must be http:// URLs",
        lambda: NodeConfig(name="n0", token=TOKEN, initial_members={"n0": f"https://{LOCAL}:2379"}),
    )


# ---------------------------------------------------------------------- 3. a TLS cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(3, tls=True) as c:
        c.wait_for_leader()
        yield c


def terms(c: Cluster) -> list[int]:
    statuses = [c.node_status(i, timeout=READ_TIMEOUT) for i in range(len(c.nodes))]
    assert all(s is not None for s in statuses), statuses
    return [int(s["term"]) for s in statuses if s is not None]


def deposing_batch(node: str, term: int) -> bytes:
    """An append from a leader nobody knows, in a far later term: a node that
    took it would adopt the term and follow the intruder."""
    return encode_batch([Message(MessageType.APPEND, term, "intruder", node)])


def post_batch(c: Cluster, i: int, term: int, **tls: Any) -> requests.Response:
    return requests.post(
        f"{c.endpoints[i]}/raft/messages",
        data=deposing_batch(c.nodes[i].name, term),
        headers={"Authorization": f"Bearer {c.token}", "Content-Type": "application/json"},
        timeout=READ_TIMEOUT,
        verify=c.ca_file,
        **tls,
    )


def assert_not_deposed(c: Cluster, forged: int) -> None:
    for i, term in enumerate(terms(c)):
        # A real election may move a term by a few; only the forged batch jumps to `forged`.
        assert term < forged, f"n{i} took the forged term {forged}: {term}"
        status = c.node_status(i, timeout=READ_TIMEOUT)
        assert status is not None and status["leader"] != "intruder", status


@pytest.mark.integration
def test_a_peer_with_another_cas_certificate_cannot_deliver_a_raft_message(
    cluster: Cluster, pki: Pki
) -> None:
    forged = max(terms(cluster)) + 1000
    for i in range(3):
        with pytest.raises(requests.exceptions.SSLError):  # the handshake failed
            post_batch(cluster, i, forged, cert=pki.foreign)
    assert_not_deposed(cluster, forged)


@pytest.mark.integration
def test_a_peer_without_a_certificate_is_forbidden_even_with_the_token(cluster: Cluster) -> None:
    forged = max(terms(cluster)) + 1000
    for i in range(3):
        r = post_batch(cluster, i, forged)
        assert r.status_code == 403, (r.status_code, r.text[:300])
        assert r.json()["error"] == "forbidden"
    assert_not_deposed(cluster, forged)


@pytest.mark.integration
def test_a_client_must_trust_the_clusters_ca(cluster: Cluster) -> None:
    with (
        cluster.client(ca=None, cert=None, key=None, timeout=1.5) as c,
        pytest.raises(KvClusterError) as info,
    ):
        c.put("tls", "untrusted")
    assert "certificate" in str(info.value).lower(), info.value
    with cluster.client(cert=None, key=None) as c:  # the CA, and no certificate of its own
        c.put("tls", "trusted")
        assert c.get("tls") == "trusted"


@pytest.mark.integration
def test_a_lease_kept_alive_in_the_background_and_a_watch_work_over_tls(cluster: Cluster) -> None:
    """The Client's own threads and sockets (a keep-alive, a watch) carry its CA too."""
    with cluster.client(cert=None, key=None) as c, c.lease_grant(2) as lease:
        keeper = lease.keep_alive_forever()
        c.put("tls/leased", "v", lease=lease.id)
        until_renewed = time.monotonic() + DEADLINE
        while keeper.renewals < 2:
            assert keeper.error is None, keeper.error
            assert time.monotonic() < until_renewed, "the keep-alive never renewed"
            time.sleep(0.05)
        with c.watch("tls/leased", start_revision=1) as watch:
            event = watch.get(timeout=DEADLINE)
            assert event is not None and event.value == "v"


@pytest.mark.integration
def test_the_clusters_own_certificate_delivers_the_same_batch(cluster: Cluster) -> None:
    """What the two refusals above kept out does depose a node when a peer sends
    it: the refusals were the certificate check's doing. (Last of this cluster's
    tests: it moves the cluster's term on.)"""
    leader = cluster.wait_for_leader()
    follower = next(i for i in range(3) if i != leader)
    forged = max(terms(cluster)) + 1000
    assert cluster.cert_file is not None and cluster.key_file is not None
    r = post_batch(cluster, follower, forged, cert=(cluster.cert_file, cluster.key_file))
    assert r.status_code == 204, (r.status_code, r.text[:300])
    deadline = time.monotonic() + DEADLINE
    while terms(cluster)[follower] < forged:
        assert time.monotonic() < deadline, "the delivered batch never moved the term"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cert_auth_cluster() -> Iterator[Cluster]:
    with Cluster(3, tls=True, client_cert_auth=True) as c:
        c.wait_for_leader()
        yield c


def anonymous_put(c: Cluster) -> KvClusterError:
    """A put by a client that trusts the CA but shows no certificate: its error."""
    with (
        c.client(cert=None, key=None, timeout=1.5) as anonymous,
        pytest.raises(KvClusterError) as info,
    ):
        anonymous.put("who", "nobody")
    return info.value


@pytest.mark.integration
def test_client_cert_auth_needs_a_client_certificate(cert_auth_cluster: Cluster) -> None:
    c = cert_auth_cluster
    assert "SSLError" in str(anonymous_put(c))  # refused at the handshake
    with c.client() as known:  # the Cluster's certificate, from the CA the nodes trust
        known.put("who", "known")
        assert known.get("who") == "known"


@pytest.mark.integration
def test_a_client_without_a_certificate_is_told_it_needs_one(cert_auth_cluster: Cluster) -> None:
    """Not a bare EOF: the node's alert ("certificate required") reaches the client."""
    error = anonymous_put(cert_auth_cluster)
    assert "certificate" in str(error).lower(), error


# ---------------------------------------------------------------------- 4. the command line


def certs(where: Path) -> Path:
    """`kvcluster certs ca` and `certs issue a` into `where`."""
    made = kvcluster("certs", "ca", "--dir", str(where), cwd=where)
    assert made.returncode == 0, made.stderr
    made = kvcluster(
        "certs",
        "issue",
        "a",
        "--host",
        LOCAL,
        "--host",
        "localhost",
        "--dir",
        str(where),
        cwd=where,
    )
    assert made.returncode == 0, made.stderr
    for name in ("ca.pem", "ca.key", "a.pem", "a.key"):
        assert (where / name).is_file(), name
    for key in ("ca.key", "a.key"):
        assert stat.S_IMODE((where / key).stat().st_mode) == 0o600, key
    return where


def tls_flags(where: Path) -> list[str]:
    return [
        "--cert-file",
        str(where / "a.pem"),
        "--key-file",
        str(where / "a.key"),
        "--peer-trusted-ca-file",
        str(where / "ca.pem"),
    ]


def leads_over_https(node: ServedNode, ca: str) -> int | None:
    """The exit status if `serve` exits, None once it leads over https."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        code = node.proc.poll()
        if code is not None:
            return code
        with contextlib.suppress(requests.RequestException, ValueError):
            r = requests.get(f"{node.url}/v1/status", timeout=1, verify=ca)
            if r.status_code == 200 and r.json().get("role") == "leader":
                return None
        time.sleep(0.05)
    raise AssertionError(f"serve neither led nor exited:\n{node.stderr()[-2000:]}")


@contextlib.contextmanager
def serving_https(where: Path) -> Iterator[ServedNode]:
    """A one-node https cluster from `kvcluster serve`, token from the environment."""
    env = clean_env(KVCLUSTER_TOKEN=TOKEN)
    for _ in range(5):  # a port can be taken between choosing and binding it
        node = ServedNode("a", free_port(), where, args=tls_flags(where), env=env)
        node.url = f"https://{LOCAL}:{node.port}"
        with node:
            node.start("--initial-cluster", f"a={node.url}", "--data-dir", str(where / "data"))
            code = leads_over_https(node, str(where / "ca.pem"))
            if code is None:
                yield node
                return
        if "cannot listen" not in node.stderr():
            raise AssertionError(f"serve did not start (exit {code}):\n{node.stderr()[-2000:]}")
    raise AssertionError("no free port")


@pytest.mark.integration
def test_certs_serve_and_client_commands_over_https(tmp_path: Path) -> None:
    where = certs(tmp_path)
    ca = str(where / "ca.pem")
    with serving_https(where) as node:
        put = kvcluster(
            "put", "--endpoints", node.url, "--cacert", ca, "greeting", "hello", cwd=where
        )
        assert put.returncode == 0, put.stderr
        got = kvcluster("get", "--endpoints", node.url, "--cacert", ca, "greeting", cwd=where)
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == "hello"
        # The CA from the environment works the same; without any, the node's
        # certificate cannot be verified and the command says so.
        env = clean_env(KVCLUSTER_CACERT=ca)
        assert (
            kvcluster("get", "--endpoints", node.url, "greeting", cwd=where, env=env).stdout.strip()
            == "hello"
        )
        untrusted = kvcluster(
            "get", "--endpoints", node.url, "--timeout", "1", "greeting", cwd=where
        )
        assert untrusted.returncode != 0
        assert "Traceback" not in untrusted.stderr, untrusted.stderr
        assert "certificate" in untrusted.stderr.lower(), untrusted.stderr
        assert node.stop() == 0, node.stderr()


def test_serve_with_a_certificate_and_http_members_is_a_usage_error(tmp_path: Path) -> None:
    where = certs(tmp_path)
    result = kvcluster(
        "serve",
        "--name",
        "a",
        "--initial-cluster",
        f"a=http://{LOCAL}:2379",
        *tls_flags(where),
        cwd=tmp_path,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "usage: kvcluster" in result.stderr, result.stderr
    assert "argument --initial-cluster: " in result.stderr, result.stderr
    assert "https://" in result.stderr, result.stderr


def test_up_with_tls_prints_what_a_client_needs(tmp_path: Path) -> None:
    """`kvcluster up --tls`: the exports it prints are all a client command needs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvcluster", "up", "-n", "1", "--tls"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _read_until(proc, "Ctrl-C stops the cluster.")
        assert lines is not None, proc.stderr.read() if proc.stderr else ""
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in lines
            if line.startswith("export ")
        )
        assert exports["KVCLUSTER_ENDPOINTS"].startswith("https://127.0.0.1:"), exports
        env = clean_env(
            KVCLUSTER_ENDPOINTS=exports["KVCLUSTER_ENDPOINTS"],
            KVCLUSTER_CACERT=exports["KVCLUSTER_CACERT"],
        )
        put = kvcluster("put", "greeting", "hello", cwd=tmp_path, env=env)
        assert put.returncode == 0, put.stderr
        assert kvcluster("get", "greeting", cwd=tmp_path, env=env).stdout.strip() == "hello"
    finally:
        _stop_up(proc)


@pytest.mark.integration
def test_a_work_directory_reused_by_a_new_tls_cluster_gets_certificates_from_its_ca(
    tmp_path: Path,
) -> None:
    """A second Cluster in the same work directory makes its own CA: every node
    certificate must be issued again by it, not kept from the first."""
    for value in ("first", "second"):
        with Cluster(3, tls=True, work_dir=tmp_path) as c:
            c.wait_for_leader(DEADLINE)
            with c.client(timeout=DEADLINE) as client:
                client.put("reused", value)
                assert client.get("reused") == value
