"""The `kvcluster` command line, through real processes: usage errors for bad
configuration, tokens that never need the command line, quick and loud
failures, and the README's examples run as printed against `kvcluster up`."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import requests
from served import clean_env, free_port, serving_alone

from kvcluster.cluster import Cluster
from kvcluster.experiments.cli import build_parser as bench_parser
from kvcluster.experiments.election import summary

DEADLINE = 60.0  # generous for a busy 2-core machine; tests wait for conditions
README = Path(__file__).resolve().parent.parent / "README.md"
# A command that waited out its retry budget would take an hour; the tests
# only need it to come back at all (in far less than RUN_LIMIT).
HOUR = "3600"
RUN_LIMIT = 300.0


def kvcluster(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvcluster", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env if env is not None else clean_env(),
        timeout=RUN_LIMIT,
        check=False,
    )


def closed_port() -> int:
    """A port nothing listens on (bound and closed again: refused if connected to)."""
    return free_port()


def usage_error(result: subprocess.CompletedProcess[str], flag: str, says: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "usage: kvcluster" in result.stderr, result.stderr
    assert f"argument {flag}: " in result.stderr, result.stderr
    assert says in result.stderr, result.stderr


# ---------------------------------------------------------------------- configuration

SERVE = ["serve", "--name", "a", "--initial-cluster", "a=http://127.0.0.1:2379"]


@pytest.mark.parametrize(
    ("args", "flag", "says"),
    [
        (["--election-timeout", "inf,inf"], "--election-timeout", "0 < lo <= hi <= 60"),
        (["--election-timeout", "1e300,1e308"], "--election-timeout", "<= 60"),
        (["--heartbeat", "1e-7"], "--heartbeat", "at least 0.001 s"),
        (["--heartbeat", "1.0"], "--heartbeat", "below the election timeout's low end"),
        (["--listen", "127.0.0.1:abc"], "--listen", "port from 1 to 65535"),
        (["--initial-cluster", ""], "--initial-cluster", "at least one member"),
        (["--initial-cluster", "b=http://127.0.0.1:2380"], "--initial-cluster", "include this"),
        (
            ["--initial-cluster", "a=http://127.0.0.1:2379,a=http://127.0.0.1:2380"],
            "--initial-cluster",
            "names 'a' twice",
        ),
        (["--initial-cluster", "a=http://127.0.0.1"], "--initial-cluster", "port from 1"),
        (["--name", ""], "--name", "1-64 characters"),
        (["--snapshot-every", "-5"], "--snapshot-every", "at least 0"),
        (["--quota-bytes", "1000"], "--quota-bytes", "64 KiB (65536) to 1 TiB"),
    ],
)
def test_serve_refuses_nonsense_configuration_with_a_usage_error(
    args: list[str], flag: str, says: str
) -> None:
    usage_error(kvcluster(*SERVE, *args), flag, says)


def test_serve_refuses_a_join_url_that_is_not_one() -> None:
    result = kvcluster("serve", "--name", "a", "--join", "not-a-url")
    usage_error(result, "--join", "http://")


@pytest.mark.parametrize(
    ("args", "flag", "says"),
    [
        (["-n", "0"], "-n", "from 1 to 64"),
        (["-n", "3", "--port", "65534"], "--port", "from 1 to 65533"),
        (["--election-timeout", "inf,inf"], "--election-timeout", "<= 60"),
        (["--quota-bytes", "0"], "--quota-bytes", "64 KiB (65536) to 1 TiB"),
    ],
)
def test_up_refuses_nonsense_configuration_with_a_usage_error(
    args: list[str], flag: str, says: str
) -> None:
    usage_error(kvcluster("up", *args), flag, says)


def help_of(*command: str) -> str:
    result = kvcluster(*command, "--help")
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())  # as one line, whatever the terminal width


def test_bench_refuses_timing_no_cluster_could_run_before_it_starts_one() -> None:
    usage_error(kvcluster("bench", "election", "--timeouts", "1000-100000"), "--timeouts", "<= 60")
    usage_error(kvcluster("bench", "timeline", "--heartbeat-ms", "0"), "--heartbeat-ms", "0.001")


def test_help_shows_defaults() -> None:
    serve = help_of("serve")
    assert "(default: 127.0.0.1:2379)" in serve and "(default: 0.5,1.0)" in serve
    assert "(default: 5)" in help_of("up")
    assert "(default: 10)" in help_of("get")
    assert "(default: results)" in " ".join(bench_parser().format_help().split())
    election = help_of("bench", "election")
    assert "(default: 150-300)" in election and "(default: 100)" in election


def test_bench_takes_its_common_flags_after_the_experiment_too(tmp_path: Path) -> None:
    after = bench_parser().parse_args(["election", "--quiet", "--out", str(tmp_path)])
    before = bench_parser().parse_args(["--quiet", "--out", str(tmp_path), "election"])
    default = bench_parser().parse_args(["election"])
    assert after.quiet and before.quiet and not default.quiet
    assert after.out == before.out == tmp_path and default.out == Path("results")


# ---------------------------------------------------------------------- failing quickly


def test_a_command_against_a_closed_port_fails_at_once_naming_the_endpoint() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    # With an hour to retry, coming back at all shows it did not wait for the budget.
    result = kvcluster("put", "k", "v", "--endpoints", endpoint, "--timeout", HOUR)
    assert result.returncode == 1, result
    assert endpoint in result.stderr and "connection refused" in result.stderr
    assert "is the cluster running?" in result.stderr
    assert "Traceback" not in result.stderr


def test_global_flags_go_before_the_command_too() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = kvcluster("--endpoints", endpoint, "--timeout", HOUR, "get", "k")
    assert result.returncode == 1 and endpoint in result.stderr, result


def test_a_malformed_endpoint_is_a_usage_error() -> None:
    usage_error(kvcluster("put", "k", "v", "--endpoints", "not-a-url"), "--endpoints", "not-a-url")
    from_env = kvcluster("get", "k", env=clean_env(KVCLUSTER_ENDPOINTS="not-a-url"))
    assert from_env.returncode == 2 and "$KVCLUSTER_ENDPOINTS" in from_env.stderr


def test_an_unresolvable_host_fails_at_once() -> None:
    endpoint = f"http://no-such-host.invalid:{closed_port()}"
    result = kvcluster("get", "k", "--endpoints", endpoint, "--timeout", HOUR)
    assert result.returncode == 1
    assert "host name not found" in result.stderr and "NameResolutionError" not in result.stderr


def test_status_exits_1_when_an_endpoint_does_not_answer() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = kvcluster("status", "--endpoints", endpoint)
    assert result.returncode == 1
    assert json.loads(result.stdout)["address"] == endpoint


# ---------------------------------------------------------------------- tokens


def uses_token(url: str, token: str) -> bool:
    """Whether the node takes `token` on a token-protected route (a member that
    does not exist: 404 with the token, 401 without it)."""
    r = requests.delete(
        f"{url}/v1/members/nobody", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert r.status_code in (401, 404), r.text
    return r.status_code == 404


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_serve_reads_its_token_from_a_file_and_never_shows_it(tmp_path: Path) -> None:
    token_file = tmp_path / "cluster.token"
    token_file.write_text("s3cret-from-a-file\n")
    token_file.chmod(0o600)
    with serving_alone(tmp_path, "--token-file", str(token_file), cwd=tmp_path) as node:
        assert uses_token(node.url, "s3cret-from-a-file")
        assert not uses_token(node.url, "something-else")
        cmdline = Path(f"/proc/{node.proc.pid}/cmdline").read_bytes()
        assert b"s3cret" not in cmdline
        assert "warning" not in node.stderr()


def test_serve_reads_its_token_from_the_environment(tmp_path: Path) -> None:
    env = clean_env(KVCLUSTER_TOKEN="s3cret-from-the-env")
    with serving_alone(tmp_path, env=env, cwd=tmp_path) as node:
        assert uses_token(node.url, "s3cret-from-the-env")


def test_a_token_on_the_command_line_works_but_warns(tmp_path: Path) -> None:
    with serving_alone(tmp_path, "--token", "visible-to-all", cwd=tmp_path) as node:
        assert uses_token(node.url, "visible-to-all")
        assert "--token is visible to every user" in node.stderr()
        assert "--token-file" in node.stderr()


def test_a_generated_token_goes_to_a_file_only_its_owner_can_read(tmp_path: Path) -> None:
    with serving_alone(tmp_path, cwd=tmp_path) as node:
        files = list(tmp_path.glob("kvcluster-a-*.token"))
        assert len(files) == 1, files
        path = files[0]
        assert private(path)
        assert uses_token(node.url, path.read_text().strip())
        message = node.stderr()
        assert str(path) in message and f"--token-file {path}" in message
        assert "KVCLUSTER_TOKEN=$(cat" in message
        assert path.read_text().strip() not in message  # the token itself is not printed


def test_a_bad_token_file_is_a_usage_error(tmp_path: Path) -> None:
    usage_error(
        kvcluster(*SERVE, "--token-file", str(tmp_path / "missing")), "--token-file", "cannot read"
    )
    (tmp_path / "empty").write_text("\n")
    usage_error(kvcluster(*SERVE, "--token-file", str(tmp_path / "empty")), "--token-file", "empty")


# ---------------------------------------------------------------------- integers


def test_counts_in_summary_tables_are_integers() -> None:
    trials = pd.DataFrame(
        {
            "n": [3] * 5,
            "timeout_lo_ms": [150.0] * 5,
            "timeout_hi_ms": [300.0] * 5,
            "fault": ["kill"] * 5,
            "elected": [True] * 5,
            "election_ms": [200.0, 210.0, 220.0, 230.0, 240.0],
            "unavailable_ms": [300.0] * 5,
            "split_vote": [False, True, False, False, False],
            "terms_used": [1, 2, 1, 1, 1],
        }
    )
    table = summary(trials)
    assert pd.api.types.is_integer_dtype(table["trials"])
    assert pd.api.types.is_integer_dtype(table["elected"])
    assert re.search(r"\btrials\b", table.to_string()) and " 5.0" not in table.to_string()


@pytest.mark.integration
def test_the_events_term_column_is_integer() -> None:
    with Cluster(1) as c:
        c.wait_for_leader(DEADLINE)
        c.mark("look")  # a harness event: no term
        events = c.events()
    assert str(events["term"].dtype) == "Int64"
    terms = events["term"].dropna()
    assert events["term"].isna().any() and (terms >= 0).all() and terms.max() >= 1


# ---------------------------------------------------------------------- the README


def readme_blocks(section: str, lang: str = "sh") -> list[str]:
    """The ```sh (or other `lang`) blocks of one `## section` of the README."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end > 0 else len(text)]
    return re.findall(rf"```{lang}\n(.*?)```", body, flags=re.S)


def on_ports(text: str, first: int) -> str:
    """The README's ports 2379, 2380, 2381 moved to first, first + 1, first + 2."""
    return re.sub(r"\b238([01])\b|\b2379\b", lambda m: str(first + _offset(m.group(0))), text)


def _offset(port: str) -> int:
    return int(port) - 2379


def consecutive_free_ports(n: int) -> int:
    for _ in range(50):
        first = free_port()
        if first + n > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(first, first + n):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise AssertionError(f"no {n} consecutive free ports")


@dataclass
class Up:
    proc: subprocess.Popen[str]
    first: int
    lines: list[str]


def kvcluster_on_path(tmp: Path) -> dict[str, str]:
    """An environment where `kvcluster` is this checkout's, as a user's shell has it."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "kvcluster"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m kvcluster "$@"\n')
    script.chmod(0o755)
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    env["PYTHONPATH"] = str(README.parent)
    return env


@contextlib.contextmanager
def readme_up(cwd: Path, env: dict[str, str]) -> Iterator[Up]:
    """The README's `kvcluster up` line, on free ports, until it says it is up."""
    (line,) = [
        ln for ln in readme_blocks("Command line")[0].splitlines() if ln.startswith("kvcluster up")
    ]
    assert "--port 2379" in line
    for _ in range(5):  # ports can be taken between choosing and binding them
        first = consecutive_free_ports(3)
        proc = subprocess.Popen(
            ["/bin/sh", "-c", "exec " + on_ports(line, first)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = _read_until(proc, "Ctrl-C stops the cluster.")
        if lines is None:
            err = proc.stderr.read() if proc.stderr else ""
            _stop_up(proc)
            if "needs ports" in err:
                continue
            raise AssertionError(f"kvcluster up did not start: {err}")
        try:
            yield Up(proc, first, lines)
        finally:
            _stop_up(proc)
        return
    raise AssertionError("no free ports for kvcluster up")


def _read_until(proc: subprocess.Popen[str], last: str) -> list[str] | None:
    """stdout lines up to `last`; None if the process ended first. (up prints its
    lines once its cluster has a leader, and the deadline is kvcluster's own:
    Cluster gives up on a node that does not start in 30 s.)"""
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.strip() == last:
            return lines
    return None


def _stop_up(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        proc.wait(DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("kvcluster up did not stop on Ctrl-C") from None
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def nothing_listens(ports: range) -> bool:
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


def wait_until_closed(ports: range) -> None:
    deadline = time.monotonic() + DEADLINE
    while not nothing_listens(ports):
        assert time.monotonic() < deadline, f"a node still listens on one of {list(ports)}"
        time.sleep(0.1)


def run_block(block: str, cwd: Path, env: dict[str, str], prelude: str = "") -> list[str]:
    """Run a README block with bash, stopping at the first command that fails."""
    result = subprocess.run(
        ["bash", "-e", "-u", "-o", "pipefail", "-c", prelude + block],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout.splitlines()


@pytest.mark.integration
def test_the_readme_command_line_examples_run_as_printed(tmp_path: Path) -> None:
    env = kvcluster_on_path(tmp_path)
    with readme_up(tmp_path, env) as up:
        token_file = tmp_path / "cluster.token"
        assert private(token_file)
        ports = range(up.first, up.first + 3)
        assert any(f"KVCLUSTER_TOKEN=$(cat {token_file.name})" in ln for ln in up.lines)
        # The README relies on the default endpoint, http://127.0.0.1:2379: moved too.
        env["KVCLUSTER_ENDPOINTS"] = f"http://127.0.0.1:{up.first}"
        out = run_block(on_ports(readme_blocks("Command line")[1], up.first), tmp_path, env)
    wait_until_closed(ports)  # Ctrl-C stopped every node
    assert json.loads(out[0]) == {"key": "greeting", "revision": 1}
    assert out[1] == "hello" and out[2] == "hello"
    assert out[3] == "greeting\thello"
    deleted = json.loads(out[4])
    assert deleted == {"key": "greeting", "deleted": 1} and type(deleted["deleted"]) is int
    statuses = [json.loads(line) for line in out[5:9]]
    assert all("error" not in s for s in statuses)
    assert [s["name"] for s in statuses] == ["n1", "n0", "n1", "n2"]
    assert set(json.loads(out[9])["members"]) == {"n0", "n1"}


@pytest.mark.integration
def test_the_readme_curl_examples_run_as_printed(tmp_path: Path) -> None:
    assert shutil.which("curl"), "the README's HTTP examples need curl"
    env = kvcluster_on_path(tmp_path)
    # An HTTP error fails the block instead of printing an envelope.
    prelude = 'curl() { command curl -sS --fail-with-body "$@"; echo; }\n'
    with readme_up(tmp_path, env) as up:
        first, metrics = readme_blocks("HTTP API")[:2]
        out = run_block(on_ports(first, up.first), tmp_path, env, prelude)
        answers = [json.loads(line) for line in out if line]
        # Metrics and health, with the N the first block set.
        n = next(line for line in first.splitlines() if line.startswith("N="))
        scraped = run_block(on_ports(f"{n}\n{metrics}", up.first), tmp_path, env, prelude)
    wait_until_closed(range(up.first, up.first + 3))
    assert answers[0]["key"] == "greeting" and answers[0]["revision"] == 1
    assert answers[1]["value"] == "hello" and answers[2]["value"] == "hello"
    assert answers[3]["count"] == 1 and answers[4]["deleted"] == 1
    assert answers[5] == answers[6]  # the retry in a session: the first answer again
    assert answers[5]["key"] == "once" and answers[5]["created"] is True
    assert answers[7]["role"] in ("leader", "follower")
    assert set(answers[8]["members"]) == {"n0", "n1", "n2"}
    assert set(answers[9]["members"]) == {"n0", "n1"}  # the token was accepted
    samples = [line for line in scraped if line.startswith("etcd_")]
    assert samples and all(
        re.fullmatch(r"etcd_server_[a-z_]+(\{[^}]*\})? [0-9.e+-]+", line) for line in samples
    ), scraped
    assert "etcd_server_has_leader 1.0" in samples, scraped
    (health,) = [line for line in scraped if line.startswith("{")]
    assert json.loads(health) == {"health": "true", "reason": ""}


@pytest.mark.integration
def test_the_readme_etcd_examples_run_as_printed(tmp_path: Path) -> None:
    env = kvcluster_on_path(tmp_path)
    prelude = 'curl() { command curl -sS "$@"; echo; }\n'
    sh, python = readme_blocks("etcd's API")[0], readme_blocks("etcd's API", "python")[0]
    with readme_up(tmp_path, env) as up:
        out = run_block(on_ports(sh, up.first), tmp_path, env, prelude)
        code = on_ports(python, up.first) + "\ncancel()\nprint(etcd.get('config/colour'))\n"
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=RUN_LIMIT
        )
    wait_until_closed(range(up.first, up.first + 3))
    answers = [json.loads(line) for line in out if line]
    assert answers[0]["header"]["revision"] == "1"
    assert [base64.b64decode(kv["value"]) for kv in answers[1]["kvs"]] == [b"hello"]
    assert answers[2]["succeeded"] is True
    assert int(answers[3]["TTL"]) == 10 and int(answers[3]["ID"]) > 0
    watched = [a["result"] for a in answers[4:]]
    assert watched[0].get("created") is True
    events = [e for r in watched[1:] for e in r.get("events", [])]
    assert [base64.b64decode(e["kv"]["value"]) for e in events] == [b"hello", b"bye"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("[b'green']")
