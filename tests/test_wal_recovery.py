"""WAL recovery in a real node process: torn writes are cut, corruption stops the node.

Issue 12's reproduction: in a one-node cluster (the node is the whole quorum,
so its last record may be an acknowledged write), a byte flipped inside the
last complete record used to be taken for a torn write and cut with a warning,
and the acknowledged key was gone. Now `kvcluster serve` refuses to start on
it, naming the file and the byte offset; a record the file ends inside (a crash
mid-write) is still cut and the node serves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from served import DEADLINE, ServedNode, clean_env, serving_alone

from kvcluster.client import Client
from kvcluster.storage.wal import FRAME, list_segments

pytestmark = pytest.mark.integration

ENV = clean_env(KVCLUSTER_TOKEN="t" * 32)
TIMING = ("--election-timeout", "0.1,0.2", "--heartbeat", "0.02")


def node(data: Path, port: int, log_dir: Path) -> ServedNode:
    """The one-node cluster on disk again, on the port it was first given."""
    n = ServedNode("a", port, log_dir, env=ENV)
    n.start("--initial-cluster", f"a={n.url}", "--data-dir", str(data), *TIMING)
    return n


def last_record(data: Path) -> tuple[Path, int, int]:
    """(segment, offset, body length) of the last record in the last WAL segment."""
    seg = list_segments(data / "wal")[-1][1]
    buf = seg.read_bytes()
    off = last = 0
    while off < len(buf):
        last = off
        off += FRAME.size + FRAME.unpack_from(buf, off)[0]
    assert off == len(buf), "the log should end with a whole record after a clean stop"
    return seg, last, FRAME.unpack_from(buf, last)[0]


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, int, dict[str, str]]:
    """A data directory holding acknowledged writes, its node stopped; and the port."""
    data = tmp_path / "data"
    with serving_alone(tmp_path, "--data-dir", str(data), *TIMING, env=ENV) as n:
        expected = {f"k{i}": f"value {i}" for i in range(10)}
        with Client([n.url], timeout=DEADLINE) as client:
            for key, value in expected.items():
                client.put(key, value)  # acknowledged: committed on the one node
    return data, n.port, expected


def test_a_corrupted_complete_last_record_stops_the_node(
    tmp_path: Path, written: tuple[Path, int, dict[str, str]]
) -> None:
    data, port, _ = written
    seg, off, n = last_record(data)
    size = seg.stat().st_size
    with open(seg, "r+b") as f:  # flip one byte in the middle of the record's body
        f.seek(off + FRAME.size + n // 2)
        b = f.read(1)[0]
        f.seek(off + FRAME.size + n // 2)
        f.write(bytes([b ^ 0x20]))
    with node(data, port, tmp_path) as again:
        code = again.wait_exit_or_lead()
        err = again.stderr()
    assert code is not None, f"the node served on a corrupt log:\n{err[-2000:]}"
    assert code == 3, err[-2000:]  # fail-stop, like any storage error
    assert f"corrupt write-ahead log {seg} at byte offset {off}" in err, err[-2000:]
    assert "Traceback" not in err
    assert "torn record" not in err
    assert seg.stat().st_size == size  # nothing was cut


def test_a_last_record_cut_short_is_a_torn_write_and_the_node_serves(
    tmp_path: Path, written: tuple[Path, int, dict[str, str]]
) -> None:
    data, port, expected = written
    seg, off, n = last_record(data)
    os.truncate(seg, off + FRAME.size + n // 2)  # the file ends inside the last record
    with node(data, port, tmp_path) as again:
        code = again.wait_exit_or_lead()
        assert code is None, f"the node exited ({code}):\n{again.stderr()[-2000:]}"
        assert f"{seg}: torn record at byte offset {off}" in again.stderr()
        with Client([again.url], timeout=DEADLINE) as client:
            stored = client.list("k")
    # The cut record may be the last put (then it is lost, as a write that was
    # never on disk is) or something written after it; everything before it stays.
    assert {k: v for k, v in expected.items() if k != "k9"}.items() <= stored.items()
