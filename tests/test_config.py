"""Configuration is checked in one place: every setting no node could work with
is refused with a ConfigError that names it and says what is accepted.

The command line's usage errors for the same cases, through real processes,
are in test_cli.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from kvcluster.cluster import Cluster
from kvcluster.raft import ConfigError, RaftOptions
from kvcluster.server.config import (
    MAX_NODES,
    NodeConfig,
    check_cluster,
    parse_listen,
    parse_members,
    parse_peer_url,
    parse_peer_urls,
)

INF = math.inf


def refused(setting: str, says: str, build: Any, *args: Any, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build(*args, **kwargs)
    assert info.value.setting == setting, info.value
    assert says in info.value.reason, info.value
    assert isinstance(info.value, ValueError)  # callers that caught ValueError still do
    return info.value


# ---------------------------------------------------------------------- Raft timing


@pytest.mark.parametrize(
    ("timeout", "heartbeat", "setting", "says"),
    [
        ((INF, INF), 0.1, "election_timeout", "0 < lo <= hi <= 60"),
        ((1e300, 1e308), 0.1, "election_timeout", "0 < lo <= hi <= 60"),
        ((0.5, 61.0), 0.1, "election_timeout", "<= 60"),
        ((1.0, 0.5), 0.1, "election_timeout", "lo <= hi"),
        ((0.0, 1.0), 0.1, "election_timeout", "0 < lo"),
        ((-1.0, 1.0), 0.1, "election_timeout", "0 < lo"),
        ((math.nan, 1.0), 0.1, "election_timeout", "0 < lo"),
        ((0.5,), 0.1, "election_timeout", "(lo, hi)"),
        (0.5, 0.1, "election_timeout", "(lo, hi)"),
        ((True, 1.0), 0.1, "election_timeout", "(lo, hi)"),
        ((0.5, 1.0), 1e-7, "heartbeat_interval", "at least 0.001 s"),
        ((0.5, 1.0), 0.0, "heartbeat_interval", "at least 0.001 s"),
        ((0.5, 1.0), INF, "heartbeat_interval", "below the election timeout's low end (0.5 s)"),
        ((0.5, 1.0), math.nan, "heartbeat_interval", "at least 0.001 s"),
        ((0.5, 1.0), 0.5, "heartbeat_interval", "below the election timeout's low end (0.5 s)"),
        ((0.5, 1.0), 2.0, "heartbeat_interval", "below the election timeout's low end"),
    ],
)
def test_raft_timing_a_node_cannot_work_with_is_refused(
    timeout: Any, heartbeat: Any, setting: str, says: str
) -> None:
    refused(setting, says, RaftOptions, election_timeout=timeout, heartbeat_interval=heartbeat)


def test_the_raft_timing_bounds_themselves_are_accepted() -> None:
    RaftOptions(election_timeout=(0.002, 0.002), heartbeat_interval=0.001)
    RaftOptions(election_timeout=(60.0, 60.0), heartbeat_interval=59.9)


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"max_inflight": 0}, "max_inflight"),
        ({"max_append_entries": -1}, "max_append_entries"),
        ({"max_append_bytes": 0}, "max_append_bytes"),
        ({"lease_ratio": 1.0}, "lease_ratio"),  # a lease as long as the timeout is unsafe
        ({"lease_ratio": 0.0}, "lease_ratio"),
    ],
)
def test_other_raft_options_out_of_range_are_refused(changes: dict[str, Any], setting: str) -> None:
    refused(setting, "", RaftOptions, **changes)


# ---------------------------------------------------------------------- a node


def node(**changes: Any) -> NodeConfig:
    settings: dict[str, Any] = {"name": "a", "token": "secret"}
    settings.update(changes)
    return NodeConfig(**settings)


@pytest.mark.parametrize(
    ("changes", "setting", "says"),
    [
        ({"name": ""}, "name", "1-64 characters"),
        ({"name": "a/b"}, "name", "A-Z a-z 0-9 . _ -"),
        ({"name": "x" * 65}, "name", "1-64 characters"),
        ({"token": ""}, "token", "printable ASCII"),
        ({"token": "two words"}, "token", "without spaces"),
        ({"token": "t" * 513}, "token", "1-512"),
        ({"host": ""}, "host", "host name or IP address"),
        ({"port": 70000}, "port", "from 0 to 65535"),
        ({"port": -1}, "port", "from 0 to 65535"),
        ({"advertise_url": "http://10.0.0.1"}, "advertise_url", "port from 1 to 65535"),
        ({"advertise_url": "10.0.0.1:2379"}, "advertise_url", "http://"),
        ({"initial_members": {"b": "http://127.0.0.1:2380"}}, "initial_members", "include this"),
        ({"initial_members": {"a": "http://127.0.0.1"}}, "initial_members", "port from 1"),
        ({"initial_members": {"a": "http://127.0.0.1:99999"}}, "initial_members", "port from 1"),
        ({"initial_members": {"a": "https://127.0.0.1:2379"}}, "initial_members", "has no TLS"),
        ({"initial_members": {"a": "http://127.0.0.1:2379/x"}}, "initial_members", "only scheme"),
        ({"initial_members": {"": "http://127.0.0.1:2379"}}, "initial_members", "1-64 char"),
        (
            {"initial_members": {"a": "http://h:1", "b": "http://h:1"}},
            "initial_members",
            "the same URL",
        ),
        (
            {"port": 2379, "initial_members": {"a": "http://127.0.0.1:2380"}},
            "initial_members",
            "listens on port 2379",
        ),
        (
            {"advertise_url": "http://h:2", "initial_members": {"a": "http://h:1"}},
            "initial_members",
            "advertises http://h:2",
        ),
        ({"join": ["not-a-url"]}, "join", "http://"),
        ({"join": ["http://10.0.0.2"]}, "join", "port from 1 to 65535"),
        ({"snapshot_every": -5}, "snapshot_every", "at least 0 (0: never)"),
        ({"snapshot_every": 1.5}, "snapshot_every", "integer"),
        ({"snapshot_keep": -1}, "snapshot_keep", "at least 0"),
        ({"request_timeout": INF}, "request_timeout", "above 0 and below 3600"),
        ({"request_timeout": 0}, "request_timeout", "above 0 and below 3600"),
        ({"peer_timeout": -1.0}, "peer_timeout", "above 0 and below 3600"),
        ({"session_ttl": 0.0}, "session_ttl", "0.01 s to 7 days"),
        ({"session_ttl": math.nan}, "session_ttl", "0.01 s to 7 days"),
        ({"quota_bytes": 1000}, "quota_bytes", "64 KiB (65536) to 1 TiB"),
        ({"quota_bytes": 1.5e9}, "quota_bytes", "64 KiB (65536) to 1 TiB"),
        ({"max_value_bytes": 0}, "max_value_bytes", "from 1"),
        ({"read_mode": "fast"}, "read_mode", "proxy, read_index, lease, serializable"),
        ({"storage": "tape"}, "storage", "memory, disk"),
        ({"fsync": "sometimes"}, "fsync", "always, batch, never"),
        ({"event_loop": "trio"}, "event_loop", "uvloop, asyncio"),
        ({"storage": "disk"}, "data_dir", "disk storage"),
        ({"seed": 1.5}, "seed", "integer"),
    ],
)
def test_node_settings_a_node_cannot_work_with_are_refused(
    changes: dict[str, Any], setting: str, says: str
) -> None:
    refused(setting, says, node, **changes)


def test_a_good_node_configuration_is_accepted_and_its_urls_normalized() -> None:
    config = node(
        port=2379,
        initial_members={"a": "http://127.0.0.1:2379/", "b": "http://127.0.0.1:2380"},
        join=["http://10.0.0.2:2379/"],
        snapshot_every=0,
    )
    assert config.initial_members == {"a": "http://127.0.0.1:2379", "b": "http://127.0.0.1:2380"}
    assert config.join == ["http://10.0.0.2:2379"]
    # A Cluster's nodes get their members later (port 0, none yet): that is fine.
    node(name="n0", port=0)


# ---------------------------------------------------------------------- command-line text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "at least one member"),
        (",", "at least one member"),
        ("a=http://x:1,a=http://x:2", "names 'a' twice"),  # the last one no longer wins
        ("a", "NAME=URL"),
        ("a=http://x", "port from 1 to 65535"),  # not port 80
        ("=http://x:1", "1-64 characters"),
    ],
)
def test_bad_initial_cluster_text_is_refused(text: str, says: str) -> None:
    refused("initial_members", says, parse_members, text)


def test_initial_cluster_text_is_parsed() -> None:
    assert parse_members("a=http://h:1,b=http://h:2/") == {"a": "http://h:1", "b": "http://h:2"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("127.0.0.1:abc", "port from 1 to 65535"),
        ("127.0.0.1:99999", "port from 1 to 65535"),
        ("127.0.0.1:0", "port from 1 to 65535"),
        ("127.0.0.1", "HOST:PORT"),
        (":2379", "HOST:PORT"),
        ("::1:2379", "HOST:PORT"),  # IPv6 needs brackets
    ],
)
def test_bad_listen_addresses_are_refused(text: str, says: str) -> None:
    refused("listen", says, parse_listen, text)


def test_listen_addresses_are_parsed() -> None:
    assert parse_listen("10.0.0.1:2379") == ("10.0.0.1", 2379)
    assert parse_listen("[::1]:2380") == ("::1", 2380)


def test_join_urls() -> None:
    refused("join", "http://", parse_peer_urls, "not-a-url", "join")
    refused("join", "at least one", parse_peer_urls, ",", "join")
    assert parse_peer_urls("http://a:1,http://a:1/", "join") == ["http://a:1"]
    assert parse_peer_url("http://[::1]:2379", "advertise_url") == "http://[::1]:2379"


# ---------------------------------------------------------------------- a local cluster


@pytest.mark.parametrize(
    ("n", "first_port", "setting", "says"),
    [
        (0, 0, "n", "from 1 to 64"),
        (MAX_NODES + 1, 0, "n", "from 1 to 64"),
        (-3, 0, "n", "from 1 to 64"),
        ("3", 0, "n", "integer"),
        (3, 65534, "first_port", "from 1 to 65533"),  # node 2 would need port 65536
        (3, -1, "first_port", "from 1 to 65533"),
    ],
)
def test_cluster_level_settings_are_refused(
    n: Any, first_port: Any, setting: str, says: str
) -> None:
    refused(setting, says, check_cluster, n, first_port, token="t")


def test_check_cluster_also_checks_every_node_setting() -> None:
    refused("snapshot_every", "at least 0", check_cluster, 3, 0, token="t", snapshot_every=-5)
    check_cluster(3, 65533, token="t")


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"n": 0}, "n"),
        ({"heartbeat_interval": 1e-7}, "heartbeat_interval"),
        ({"election_timeout": (INF, INF)}, "election_timeout"),
        ({"election_timeout": (1e300, 1e308)}, "election_timeout"),
        ({"heartbeat_interval": 1.0}, "heartbeat_interval"),
        ({"snapshot_every": -5}, "snapshot_every"),
        ({"first_port": 70000}, "first_port"),
        ({"read_mode": "fast"}, "read_mode"),
        ({"host": ""}, "host"),
    ],
)
def test_cluster_refuses_before_it_makes_a_directory_or_a_process(
    tmp_path: Path, changes: dict[str, Any], setting: str
) -> None:
    work = tmp_path / "work"
    refused(setting, "", Cluster, work_dir=work, **changes)
    assert not work.exists()
