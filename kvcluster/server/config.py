"""Everything a node process needs to know to start, and the one place it is checked.

`NodeConfig` refuses, with a `ConfigError` naming the setting and its allowed
range, anything a node could not work with (`RaftOptions` does the same for
the Raft timing). The parsers below turn the command line's text into those
settings, and `check_cluster` adds what only a `Cluster` has (its size, its
first port): `kvcluster serve`, `kvcluster up` and `Cluster(...)` all go
through these, so a setting is accepted or refused the same way everywhere.
"""

from __future__ import annotations

import math
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..node.options import READ_MODES, NodeOptions
from ..raft import ConfigError, RaftOptions
from ..storage.wal import FsyncPolicy
from ..tls import TlsError, client_context, issuer_check, server_context

__all__ = [
    "EVENT_LOOPS",
    "MAX_NODES",
    "READ_MODES",
    "ConfigError",
    "NodeConfig",
    "check_cluster",
    "check_name",
    "parse_listen",
    "parse_members",
    "parse_peer_url",
    "parse_peer_urls",
]

EVENT_LOOPS = ("uvloop", "asyncio")
FSYNC_POLICIES = ("always", "batch", "never")
STORAGES = ("memory", "disk")

MAX_NODES = 64  # members of one cluster (etcd advises at most 7 voters)
MAX_NAME = 64  # what a member id may hold on the wire (server/validate.MAX_MEMBER_ID)
NAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")
MAX_TOKEN = 512
MAX_URL = 256  # what the routes accept as a member's address
MAX_WAIT = 3600.0  # seconds: peer_timeout is below it (request_timeout: NodeOptions)


@dataclass(slots=True)
class NodeConfig:
    name: str
    token: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: let the OS pick a free port
    advertise_url: str | None = None  # how peers reach us; default http(s)://host:port
    # Bootstrap: the initial members (name -> base URL), or empty to join via `join`.
    initial_members: dict[str, str] = field(default_factory=dict)
    join: list[str] = field(default_factory=list)  # addresses of existing members
    incarnation: str = ""
    raft: RaftOptions = field(default_factory=RaftOptions)
    read_mode: str = "read_index"
    request_timeout: float = 5.0  # how long a client request may wait for commit
    peer_timeout: float = 1.0  # how long a peer RPC may take before its batch is dropped
    max_key_bytes: int = 4096
    max_value_bytes: int = 1 << 20
    events_path: str | None = None
    fault_injection: bool = False  # the /admin/fault endpoints (always token-protected)
    storage: str = "memory"  # or "disk": a write-ahead log and snapshots in data_dir
    data_dir: str | None = None
    fsync: FsyncPolicy = "always"  # disk only: always | batch | never
    snapshot_every: int = 10_000  # entries applied between snapshots (0: never)
    snapshot_keep: int = 1_000  # entries kept behind a snapshot for slow followers
    session_ttl: float = 300.0  # seconds a client session may stay idle before it expires
    history_keep: int = 10_000  # revisions of history kept by automatic compaction (0: none)
    quota_bytes: int = 1 << 30  # keys, values and history a store may hold (etcd's quota)
    seed: int | None = None  # the core's randomness, for reproducible experiments
    # uvloop where it is installed (it cuts a 3-node put from ~0.95 to ~0.70 ms);
    # "asyncio" to compare, or where uvloop does not exist (Windows).
    event_loop: str = "uvloop"
    # TLS, etcd's settings (all None: plain HTTP). The port presents cert_file
    # to clients and peers; a peer must also show a certificate issued by
    # peer_trusted_ca_file (it shows peer_cert_file, by default cert_file), and
    # with client_cert_auth a client one issued by trusted_ca_file. With TLS,
    # every member URL is https://.
    cert_file: str | None = None
    key_file: str | None = None
    trusted_ca_file: str | None = None
    client_cert_auth: bool = False
    peer_cert_file: str | None = None
    peer_key_file: str | None = None
    peer_trusted_ca_file: str | None = None
    # A Cluster with netns=True: the network namespace (an `ip netns` name) the
    # node process enters before it binds, so that it has a network stack of its own.
    network_namespace: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        _check_token(self.token)
        if not isinstance(self.host, str) or not self.host or len(self.host) > MAX_URL:
            raise ConfigError("host", f"must be a host name or IP address, got {self.host!r}")
        _check_int("port", self.port, 0, 65535, "0: the OS picks")
        if self.advertise_url is not None:
            self.advertise_url = parse_peer_url(self.advertise_url, "advertise_url")
        self.initial_members = _checked_members(self.initial_members)
        if self.initial_members:
            self._check_own_address()
        self.join = [parse_peer_url(u, "join") for u in self.join]
        if not isinstance(self.raft, RaftOptions):
            raise ConfigError("raft", f"must be a RaftOptions, got {type(self.raft).__name__}")
        # What the node layer takes is checked where it is defined (NodeOptions).
        NodeOptions(
            read_mode=self.read_mode,
            request_timeout=self.request_timeout,
            snapshot_every=self.snapshot_every,
            snapshot_keep=self.snapshot_keep,
            session_ttl=self.session_ttl,
            history_keep=self.history_keep,
            quota_bytes=self.quota_bytes,
        )
        _check_seconds("peer_timeout", self.peer_timeout)
        _check_int("max_key_bytes", self.max_key_bytes, 1, 1 << 20)
        _check_int("max_value_bytes", self.max_value_bytes, 1, 1 << 26)
        _check_choice("storage", self.storage, STORAGES)
        _check_choice("fsync", self.fsync, FSYNC_POLICIES)
        if self.storage == "disk" and not self.data_dir:
            raise ConfigError("data_dir", "is needed with disk storage (a directory path)")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ConfigError("seed", f"must be an integer or None, got {self.seed!r}")
        _check_choice("event_loop", self.event_loop, EVENT_LOOPS)
        self._check_tls()
        if self.network_namespace is not None and (
            not isinstance(self.network_namespace, str)
            or not NAME_CHARS.fullmatch(self.network_namespace)
        ):
            raise ConfigError(
                "network_namespace", f"must be an `ip netns` name, got {self.network_namespace!r}"
            )

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def server_tls(self) -> ssl.SSLContext | None:
        """The context of this node's port (None: plain HTTP)."""
        if self.cert_file is None:
            return None
        cas = [self.peer_trusted_ca_file or ""]
        if self.client_cert_auth and self.trusted_ca_file not in cas:
            cas.append(self.trusted_ca_file or "")
        return server_context(
            self.cert_file,
            self.key_file or "",
            client_cas=cas,
            require_client_cert=self.client_cert_auth,
        )

    def peer_tls(self) -> ssl.SSLContext | None:
        """The context of this node's calls to its peers (None: plain HTTP)."""
        if self.cert_file is None:
            return None
        return client_context(
            self.peer_trusted_ca_file,
            self.peer_cert_file or self.cert_file,
            self.peer_key_file or self.key_file,
        )

    def _check_tls(self) -> None:
        """All or nothing: TLS settings without a certificate are a mistake, and
        with one, every file must load and every member URL must be https."""
        settings = {
            "key_file": self.key_file,
            "trusted_ca_file": self.trusted_ca_file,
            "peer_cert_file": self.peer_cert_file,
            "peer_key_file": self.peer_key_file,
            "peer_trusted_ca_file": self.peer_trusted_ca_file,
        }
        for setting, value in [("cert_file", self.cert_file), *settings.items()]:
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(setting, f"must be a file path, got {value!r}")
        if not isinstance(self.client_cert_auth, bool):
            raise ConfigError(
                "client_cert_auth", f"must be True or False, got {self.client_cert_auth!r}"
            )
        if self.cert_file is None:
            given = [name for name, value in settings.items() if value is not None]
            if self.client_cert_auth:
                given.append("client_cert_auth")
            if given:
                raise ConfigError(
                    given[0], "needs cert_file (this node's certificate) to turn TLS on"
                )
        else:
            if self.key_file is None:
                raise ConfigError("key_file", "is needed with cert_file (the certificate's key)")
            if self.peer_trusted_ca_file is None:
                raise ConfigError(
                    "peer_trusted_ca_file",
                    "is needed with TLS: peers prove themselves with certificates from this CA",
                )
            if self.client_cert_auth and self.trusted_ca_file is None:
                raise ConfigError(
                    "trusted_ca_file", "is needed with client_cert_auth (the clients' CA)"
                )
            if (self.peer_cert_file is None) != (self.peer_key_file is None):
                raise ConfigError("peer_key_file", "and peer_cert_file go together")
            # Each file under its own setting first: a missing CA is not the
            # certificate's fault.
            for setting, path in {"cert_file": self.cert_file, **settings}.items():
                if path is None:
                    continue
                try:
                    if setting.endswith("ca_file"):
                        issuer_check(path)  # reads and parses the CAs
                    else:
                        Path(path).read_bytes()
                except TlsError as exc:
                    raise ConfigError(setting, str(exc)) from None
                except OSError as exc:
                    raise ConfigError(
                        setting, f"cannot read {path}: {exc.strerror or exc}"
                    ) from None
            try:
                self.server_tls()
            except TlsError as exc:
                raise ConfigError("cert_file", str(exc)) from None
            try:
                self.peer_tls()
            except TlsError as exc:
                raise ConfigError("peer_cert_file", str(exc)) from None
        urls = [("initial_members", u) for u in self.initial_members.values()]
        urls += [("join", u) for u in self.join]
        if self.advertise_url is not None:
            urls.append(("advertise_url", self.advertise_url))
        for setting, url in urls:
            if not url.startswith(self.scheme + "://"):
                why = (
                    "this node has TLS on (cert_file)"
                    if self.tls
                    else "this node has no TLS (no cert_file)"
                )
                raise ConfigError(setting, f"must be {self.scheme}:// URLs: {why}, got {url}")

    def _check_own_address(self) -> None:
        """The node must be among the initial members, at the address it serves."""
        own = self.initial_members.get(self.name)
        if own is None:
            names = ", ".join(self.initial_members)
            raise ConfigError(
                "initial_members",
                f"must include this node ({self.name!r}) with its own URL; it names only {names}",
            )
        if self.advertise_url is not None:
            if own != self.advertise_url:
                raise ConfigError(
                    "initial_members",
                    f"gives {self.name} the URL {own}, but it advertises {self.advertise_url}",
                )
        elif self.port and urlsplit(own).port != self.port:
            raise ConfigError(
                "initial_members",
                f"gives {self.name} the URL {own}, but it listens on port {self.port} "
                f"(give the same port, or say how peers reach it with an advertise URL)",
            )


def check_cluster(n: int, first_port: int, **node_settings: Any) -> None:
    """A local cluster's settings: its size, its ports, and every node's
    (checked as the first node's NodeConfig)."""
    _check_int("n", n, 1, MAX_NODES)
    if first_port != 0:
        last = 65535 - (n - 1)
        note = "0: the OS picks; node i listens on first_port + i"
        _check_int("first_port", first_port, 1, last, note)
    NodeConfig(name="n0", port=first_port, **node_settings)


# ---------------------------------------------------------------------- parsers


def check_name(name: object, setting: str) -> str:
    if not isinstance(name, str) or not NAME_CHARS.fullmatch(name) or len(name) > MAX_NAME:
        raise ConfigError(
            setting,
            f"must be 1-{MAX_NAME} characters from A-Z a-z 0-9 . _ -, got {name!r}",
        )
    return name


def parse_peer_url(text: object, setting: str) -> str:
    """http(s)://HOST:PORT (a trailing '/' dropped): where a node's peers reach it.

    The port must be explicit (a missing one would mean 80 or 443); https when
    the cluster runs TLS (NodeConfig checks that every URL agrees).
    """
    example = "like http://10.0.0.1:2379"
    if not isinstance(text, str) or not text.isascii() or not text.isprintable():
        raise ConfigError(setting, f"must be a URL {example}, got {text!r}")
    url = text.strip().rstrip("/")
    if len(url) > MAX_URL:
        raise ConfigError(setting, f"must be a URL of at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(
            setting, f"must be a URL {example} with a port from 1 to 65535, got {text!r}"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(setting, f"must be an http:// or https:// URL {example}, got {text!r}")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise ConfigError(setting, f"must name a host, {example}, got {text!r}")
    if not port:
        raise ConfigError(setting, f"must give a port from 1 to 65535, {example}, got {text!r}")
    if parts.path or parts.query or parts.fragment or any(c in url for c in " ?#"):
        raise ConfigError(setting, f"must be only scheme, host and port, {example}, got {text!r}")
    return url


def parse_peer_urls(text: str, setting: str) -> list[str]:
    """URL,URL,...: at least one, each a peer URL."""
    urls = [parse_peer_url(part, setting) for part in text.split(",") if part.strip()]
    if not urls:
        raise ConfigError(setting, "must give at least one URL like http://10.0.0.1:2379")
    return list(dict.fromkeys(urls))


def parse_members(text: str) -> dict[str, str]:
    """NAME=URL,NAME=URL,...: the initial members (a name given twice is refused)."""
    members: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, url = part.strip().partition("=")
        if not sep:
            raise ConfigError(
                "initial_members", f"must be NAME=URL,... like a=http://10.0.0.1:2379, got {part!r}"
            )
        if name in members:
            raise ConfigError("initial_members", f"names {name!r} twice")
        members[name] = url
    return _checked_members(members, required=True)


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT, the port from 1 to 65535."""
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip("[]") if host.startswith("[") else host
    if not sep or not host or (":" in host and not text.strip().startswith("[")):
        raise ConfigError("listen", f"must be HOST:PORT like 127.0.0.1:2379, got {text!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError("listen", f"must end with a port from 1 to 65535, got {text!r}")
    return host, int(port_text)


# ---------------------------------------------------------------------- checks


def _checked_members(members: object, *, required: bool = False) -> dict[str, str]:
    """Valid names, valid and distinct URLs (normalized), at most MAX_NODES."""
    if not isinstance(members, dict):
        raise ConfigError("initial_members", f"must map names to URLs, got {members!r}")
    if required and not members:
        raise ConfigError(
            "initial_members", "must name at least one member, like a=http://10.0.0.1:2379"
        )
    if len(members) > MAX_NODES:
        raise ConfigError("initial_members", f"may name at most {MAX_NODES} members")
    checked: dict[str, str] = {}
    owner: dict[str, str] = {}
    for name, text in members.items():
        url = parse_peer_url(text, "initial_members")
        if url in owner:
            raise ConfigError(
                "initial_members", f"gives {owner[url]} and {name} the same URL {url}"
            )
        checked[check_name(name, "initial_members")] = owner[url] = url
    return checked


def _check_token(token: object) -> None:
    # It travels in an Authorization header: printable ASCII, no spaces.
    if not (
        isinstance(token, str)
        and 0 < len(token) <= MAX_TOKEN
        and token.isascii()
        and token.isprintable()
        and not any(c.isspace() for c in token)
    ):
        raise ConfigError(
            "token",
            f"must be 1-{MAX_TOKEN} printable ASCII characters without spaces "
            "(a generated one: python3 -c 'import secrets; print(secrets.token_hex(16))')",
        )


def _check_int(setting: str, value: object, lo: int, hi: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        top = f"2**{hi.bit_length() - 1}" if hi >= 1 << 40 and hi & (hi - 1) == 0 else str(hi)
        extra = f" ({note})" if note else ""
        raise ConfigError(setting, f"must be an integer from {lo} to {top}{extra}, got {value!r}")


def _check_seconds(setting: str, value: object) -> None:
    if not (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value < MAX_WAIT
    ):
        raise ConfigError(setting, f"must be seconds above 0 and below {MAX_WAIT:g}, got {value!r}")


def _check_choice(setting: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(setting, f"must be one of {', '.join(choices)}, got {value!r}")
