"""The README's three-host walk-through, run as printed on three network namespaces.

Each host (kv1, kv2, kv3) is a namespace of its own with its own address on a
virtual bridge (kvcluster.netns) and an /etc/hosts naming the three, and a
directory of its own to run in. Every command of the walk-through runs on the
host its prompt names, through `ip netns exec`, with this checkout's
`kvcluster` first on PATH; the lines printed under a command are checked in
its output. Where the README copies files between hosts, this copies them;
where it installs the systemd unit on kv3, this runs the unit's ExecStart
there (its `%H` as kv3, in its working directory), as systemd would. These
namespaces' addresses are the only ones the test sends to.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_cli import README, kvcluster_on_path

from kvcluster.netns import Network, available

pytestmark = pytest.mark.integration

HOSTS = ("kv1", "kv2", "kv3")
DEADLINE = 60.0  # seconds, for a busy 2-core machine
PROMPT = re.compile(r"^(kv[123])\$ (.*)$")
UNIT_BINARY = "/usr/local/bin/kvcluster"


@dataclass
class Step:
    host: str
    command: str
    expected: list[str] = field(default_factory=list)


def subsection(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n### {title}\n")
    end = min(i for i in (text.find("\n### ", start + 1), text.find("\n## ", start + 1)) if i > 0)
    return text[start:end]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def steps(block: str) -> list[Step]:
    """`kvN$ command` lines (with `\\` continuations), and the output lines under each."""
    found: list[Step] = []
    continued = False
    for line in block.splitlines():
        if continued:
            found[-1].command += " " + line.strip().removesuffix("\\").strip()
        elif m := PROMPT.match(line):
            found.append(Step(m.group(1), m.group(2).removesuffix("\\").strip()))
        elif line.strip():
            assert found, f"output before any command: {line!r}"
            found[-1].expected.append(line)
        continued = line.endswith("\\")
    return found


def exec_start(unit: str, host: str, kvcluster: str) -> str:
    (line,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    command = line.removeprefix("ExecStart=")
    assert command.startswith(UNIT_BINARY + " "), command
    return command.replace("%H", host).replace(UNIT_BINARY, kvcluster, 1)


def unit_setting(unit: str, name: str) -> str:
    (line,) = [ln for ln in unit.splitlines() if ln.startswith(f"{name}=")]
    return line.split("=", 1)[1]


@dataclass
class Hosts:
    network: Network
    dirs: dict[str, Path]
    env: dict[str, str]
    logs: Path
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def argv(self, host: str, command: str) -> list[str]:
        return self.network.exec_argv(host, ["sh", "-c", command])

    def run(self, step: Step) -> str:
        done = subprocess.run(
            self.argv(step.host, step.command),
            cwd=self.dirs[step.host],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        assert done.returncode == 0, (
            f"{step.host}$ {step.command}\nexit {done.returncode}\n{done.stdout}{done.stderr}"
        )
        for expected in step.expected:
            assert expected in done.stdout.splitlines(), (
                f"{step.host}$ {step.command}: expected {expected!r}, got\n{done.stdout}"
            )
        return done.stdout

    def succeeds(self, host: str, command: str) -> bool:
        done = subprocess.run(
            self.argv(host, command),
            cwd=self.dirs[host],
            env=self.env,
            capture_output=True,
            timeout=DEADLINE,
        )
        return done.returncode == 0

    def start(self, host: str, command: str, cwd: Path) -> None:
        log = (self.logs / f"{host}.log").open("wb")
        self.servers.append(
            subprocess.Popen(
                self.argv(host, f"exec {command}"),
                cwd=cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()

    def log(self, host: str) -> str:
        return (self.logs / f"{host}.log").read_text(errors="replace")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    why = available()
    assert why is None, f"the walk-through needs network namespaces (run the tests as root): {why}"
    env = kvcluster_on_path(tmp_path)
    env.pop("KVCLUSTER_TOKEN", None)
    env.pop("KVCLUSTER_ENDPOINTS", None)
    dirs = {h: tmp_path / h for h in HOSTS}
    for d in dirs.values():
        d.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    with Network() as network:
        addresses = {h: network.add_host(h) for h in HOSTS}
        network.set_hosts_file(addresses)
        setup = Hosts(network, dirs, env, logs)
        try:
            yield setup
        finally:
            for proc in setup.servers:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            for proc in setup.servers:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def test_the_readme_walk_through_runs_on_three_hosts(hosts: Hosts) -> None:
    text = subsection("Three hosts")
    make, serve, use = (steps(b) for b in blocks(text, "sh"))
    (unit,) = blocks(text, "ini")

    # On kv1: the CA, a certificate per host, the token.
    assert {s.host for s in make} == {"kv1"}
    for step in make:
        hosts.run(step)
    kv1 = hosts.dirs["kv1"]
    assert (kv1 / "token").stat().st_mode & 0o077 == 0, (
        "the token must be readable by its owner only"
    )
    # "Copy token, certs/ca.pem and each host's own certificate and key to that host."
    for host in HOSTS[1:]:
        (hosts.dirs[host] / "certs").mkdir()
        shutil.copy2(kv1 / "token", hosts.dirs[host] / "token")
        for name in ("ca.pem", f"{host}.pem", f"{host}.key"):
            shutil.copy2(kv1 / "certs" / name, hosts.dirs[host] / "certs" / name)

    # kv1 and kv2 by hand; kv3 as its systemd unit would start it.
    assert [s.host for s in serve] == ["kv1", "kv2"]
    for step in serve:
        hosts.start(step.host, step.command, hosts.dirs[step.host])
    workdir = unit_setting(unit, "WorkingDirectory")
    assert workdir == "/var/lib/kvcluster", workdir
    kvcluster = str(Path(hosts.env["PATH"].split(":")[0]) / "kvcluster")
    hosts.start("kv3", exec_start(unit, "kv3", kvcluster), hosts.dirs["kv3"])

    # Wait until each node says it is healthy (a leader, a read answered),
    # asked as the README asks it, from inside the hosts.
    deadline = time.monotonic() + DEADLINE
    for host in HOSTS:
        probe = f"curl -sf --cacert certs/ca.pem https://{host}:2379/health"
        while not hosts.succeeds("kv1", probe):
            for proc, name in zip(hosts.servers, HOSTS, strict=True):
                assert proc.poll() is None, f"{name}'s node exited:\n{hosts.log(name)}"
            assert time.monotonic() < deadline, f"{host} never became healthy:\n" + "\n".join(
                f"--- {h}\n{hosts.log(h)}" for h in HOSTS
            )
            time.sleep(0.1)

    # Then the commands "from any host", each checked against what the README prints.
    assert {s.host for s in use} <= set(HOSTS)
    for step in use:
        hosts.run(step)
    for host in HOSTS:
        assert "serving at https://kv" in hosts.log(host), hosts.log(host)
