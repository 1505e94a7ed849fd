"""What kvcluster adds to multiprocess's forkserver so that a Cluster's processes and
files go with the process that owns them, however it ends (SIGKILL included).

A Cluster's nodes are forked by a forkserver, which its owner (the process holding
the Cluster: a script, `kvcluster up`, a Jupyter kernel) starts once and shares
between Clusters. The forkserver exits when it reads EOF on its "alive" pipe,
whose write end the owner holds. But every process it forks inherits that write
end too: while a node ran, the forkserver waited for the nodes, and the nodes
(which die with their parent) waited for the forkserver, so a killed owner left
all of them running. Two halves undo that:

- In a node, `detach_node` closes the node's copy of the alive pipe, so the
  forkserver sees EOF as soon as its owner is gone.
- In the forkserver, importing this module (it is the first forkserver preload)
  moves it to a session of its own, so that signals sent to the owner's process
  group reach neither it nor the nodes, and arranges that when it exits because
  its owner died, it first kills and reaps the nodes it forked (paused ones
  included) and then removes what the owner left in the temp directory: its
  Cluster work directories and multiprocess's `pymp-*` directory, which holds
  the forkserver's socket. An owner that exits normally removes both itself;
  this covers the owner that cannot (SIGKILL, a Jupyter kernel restart).

This module imports nothing from kvcluster: the forkserver imports it before
anything else and should stay small.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

WORK_DIR_PREFIX = "kvcluster-"
OWNER_FILE = ".owner"  # the pid of the process whose Cluster made the directory
MP_TEMP_PREFIX = "pymp-"  # multiprocess.util.get_temp_dir()

OWNER_EXIT_WAIT = 5.0  # how long the forkserver waits to see its owner gone
REAP_WAIT = 10.0  # how long it waits for SIGKILLed nodes to be reaped

# Set in the forkserver (and so inherited by every node it forks): its own pid
# and its owner's. None in any other process.
forkserver_pid: int | None = None
owner_pid: int | None = None


def _forkserver_module() -> object | None:
    """multiprocess's forkserver module if it is loaded (it always is in the
    forkserver and in a node; importing it elsewhere would cost for nothing)."""
    return sys.modules.get("multiprocess.forkserver")


def _being_preloaded_by_forkserver() -> bool:
    """True while multiprocess's forkserver `main` is importing its preloads:
    the only time this module should arm anything."""
    module = _forkserver_module()
    main = getattr(module, "main", None)
    code = getattr(main, "__code__", None)
    if code is None:
        return False
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


# ------------------------------------------------------------------ in a node


def detach_node() -> int | None:
    """Called first thing in a node forked by the forkserver: close the node's
    inherited write end of the forkserver's alive pipe (a node must never keep
    the forkserver alive) and return the pid the node's parent should have (the
    forkserver's), or None if the forkserver did not load this module."""
    server = getattr(_forkserver_module(), "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
    return forkserver_pid


# ------------------------------------------------------------------ in the forkserver


def _arm() -> None:
    global forkserver_pid, owner_pid
    forkserver_pid = os.getpid()
    owner_pid = os.getppid()  # the forkserver is started directly by its owner
    # Leave the owner's process group and session: what is sent to the owner's
    # whole group must reach neither the nodes nor, before it has cleaned up,
    # the forkserver. Jupyter interrupts a kernel with SIGINT to its group (which
    # stopped every node) and force-restarts it with SIGKILL to its group; a
    # terminal sends Ctrl-C and Ctrl-Z to its foreground group. The owner stops
    # its nodes itself, and the alive pipe tells the forkserver when it is gone.
    with contextlib.suppress(OSError):
        os.setsid()
    atexit.register(_clean_up_after_owner)


def _clean_up_after_owner() -> None:
    """At the forkserver's exit: if its owner is dead, leave nothing of it behind."""
    if os.getpid() != forkserver_pid or owner_pid is None:
        return  # a node inherited this hook (nodes leave with os._exit, but be sure)
    if not _owner_gone(owner_pid):
        return  # the forkserver was stopped by a live owner, which cleans up itself
    _kill_and_reap_children()
    _remove_owner_dirs(owner_pid)


def _owner_gone(owner: int) -> bool:
    """The owner closed its end of the alive pipe; when it died, the forkserver is
    re-parented (to init or a subreaper) a moment later."""
    deadline = time.monotonic() + OWNER_EXIT_WAIT
    while os.getppid() == owner:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _children() -> list[int]:
    """The forkserver's child processes (its nodes), from /proc."""
    me = os.getpid()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(b")")[2].split()  # after "(comm)": state, ppid, ...
        if len(fields) > 1 and fields[1] == str(me).encode():
            found.append(int(name))
    return found


def _kill_and_reap_children() -> None:
    """SIGKILL every node (it works on a paused one too) and wait until each is
    gone, so that none writes to a directory after it is removed."""
    pending = set(_children())
    for pid in pending:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + REAP_WAIT
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                pending.discard(pid)
        if pending:
            time.sleep(0.01)


def _remove_owner_dirs(owner: int) -> None:
    server = getattr(_forkserver_module(), "_forkserver", None)
    address = getattr(server, "_forkserver_address", None)
    if isinstance(address, str) and not address.startswith("\0"):
        mp_temp = os.path.dirname(address)
        if os.path.basename(mp_temp).startswith(MP_TEMP_PREFIX):
            shutil.rmtree(mp_temp, ignore_errors=True)
    for d in Path(tempfile.gettempdir()).glob(WORK_DIR_PREFIX + "*"):
        if _work_dir_owner(d) == owner:
            shutil.rmtree(d, ignore_errors=True)


def _work_dir_owner(d: Path) -> int | None:
    """The pid recorded in a Cluster work directory, or None if there is none."""
    try:
        return int((d / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


if _being_preloaded_by_forkserver():
    _arm()
