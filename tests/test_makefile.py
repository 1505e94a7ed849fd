"""`make lab` works as root (containers, cloud notebooks) and as a normal user.

Jupyter refuses to start as root unless given --allow-root. What make would run
is read with `make -n` (nothing is run or installed), as whoever runs the tests
and as a user that `id -u` reports as root or not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def lab_command(path: str | None = None) -> str:
    """The jupyter line of `make lab`, without building .venv first."""
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    make = shutil.which("make")
    assert make is not None, "make is not installed"
    out = subprocess.run(
        [make, "-n", "-C", str(REPO), "-o", ".venv/.installed", "lab"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    lines = [line for line in out.splitlines() if "jupyter lab" in line]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.parametrize(("uid", "allowed"), [("0", True), ("1000", False)])
def test_lab_allows_root_only_for_root(uid: str, allowed: bool, tmp_path: Path) -> None:
    fake_id = tmp_path / "id"
    fake_id.write_text(f"#!/bin/sh\necho {uid}\n")
    fake_id.chmod(0o755)
    command = lab_command(f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    assert ("--allow-root" in command.split()) is allowed, command
    assert command.split()[-1] == "notebooks"


def test_lab_as_whoever_runs_the_tests() -> None:
    command = lab_command()
    assert ("--allow-root" in command.split()) is (os.geteuid() == 0), command
