"""Who was what, when: every node's role and term over time, from the event files.

`role_intervals(events)` turns the merged events of `Cluster.events()` into
bands (node, role, term, start, end); `plot_timeline(events)` draws them the
way RaftScope does: one row per node, a colored band per role, the term
written on each leader's band, and markers where the harness crashed, paused,
resumed or restarted a node (see `faults`) and where a node was cut off by a
partition (its own `fault` events).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

ROLE_COLORS = {
    "follower": "#9ecae1",
    "learner": "#deebf7",
    "pre-candidate": "#fdd0a2",
    "candidate": "#fd8d3c",
    "leader": "#31a354",
    "paused": "#bdbdbd",
}
MARKERS = {  # harness action: (marker, color, label)
    "kill": ("X", "#d62728", "killed (SIGKILL)"),
    "pause": ("v", "#7f7f7f", "paused (SIGSTOP)"),
    "resume": ("^", "#7f7f7f", "resumed"),
    "restart": ("o", "#1f77b4", "restarted"),
}


@dataclass
class _State:
    role: str | None = None  # None: not running
    term: float = math.nan
    start: float = 0.0
    incarnation: str = ""
    before_pause: str | None = None


def _node_key(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else 1 << 30, name)


def _value(r: Mapping[Any, Any], key: str) -> Any:
    v = r.get(key)
    # Missing: None, NaN in a float column, <NA> in an integer one (Cluster.events' term).
    return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v


def role_intervals(events: pd.DataFrame, t0: float | None = None) -> pd.DataFrame:
    """One row per (node, role, term) band: columns node, role, term, start, end (s from t0)."""
    columns = ["node", "role", "term", "start", "end"]
    if events.empty:
        return pd.DataFrame(columns=columns)
    t0 = float(events["t"].min()) if t0 is None else t0
    t_end = float(events["t"].max()) - t0
    states: dict[str, _State] = {}
    rows: list[dict[str, Any]] = []

    def switch(node: str, t: float, role: str | None, term: float) -> None:
        s = states.setdefault(node, _State())
        same_term = s.term == term or (math.isnan(s.term) and math.isnan(term))
        if s.role == role and same_term:
            return
        if s.role is not None and t > s.start:
            rows.append({"node": node, "role": s.role, "term": s.term, "start": s.start, "end": t})
        s.role, s.term, s.start = role, term, t

    for r in events.to_dict("records"):
        node, event = _value(r, "node"), r.get("event")
        if node is None:
            continue
        t = float(r["t"]) - t0
        s = states.setdefault(node, _State())
        term = _value(r, "term")
        term_f = float(term) if term is not None else s.term
        if event == "start":
            s.incarnation = _value(r, "incarnation") or ""
            switch(node, t, "learner" if s.incarnation else "follower", s.term)
        elif event == "stop":
            switch(node, t, None, s.term)
        elif event == "inject":
            action = r.get("action")
            if action == "kill":
                switch(node, t, None, s.term)
            elif action == "pause" and s.role is not None:
                s.before_pause = s.role
                switch(node, t, "paused", s.term)
            elif action == "resume" and s.role == "paused":
                switch(node, t, s.before_pause, s.term)
        elif s.role in (None, "paused"):
            continue  # a paused node logs nothing; a late line of a killed one is ignored
        elif event == "campaign":
            switch(node, t, str(r.get("role")), term_f)
        elif event == "role":
            role = str(r.get("role"))
            if role == "follower" and s.role == "learner":
                role = "learner"
            switch(node, t, role, term_f)
        elif event == "membership":
            me = (_value(r, "members") or {}).get(node)
            promoted = bool(me and me.get("voter") and me.get("incarnation", "") == s.incarnation)
            if s.role == "learner" and promoted:
                switch(node, t, "follower", s.term)
        elif term is not None and s.role is not None:
            switch(node, t, s.role, term_f)  # e.g. a follower voting in a new term
    for node in list(states):
        switch(node, t_end, None, states[node].term)
    return pd.DataFrame(rows, columns=columns)


def _partitions(events: pd.DataFrame, t0: float, n: int) -> list[tuple[str, float, float]]:
    """(node, start, end) of the times a node could reach fewer than a majority.

    From the nodes' own `fault` events (the list of peers each one drops), so
    it also shows partitions made with `Cluster.partition` directly. A node on
    the majority side of a cut is not marked: it still has a quorum.
    """
    out: list[tuple[str, float, float]] = []
    if "block" not in events.columns:
        return out
    t_end = float(events["t"].max()) - t0
    cut: dict[str, float] = {}
    for r in events[events["event"] == "fault"].to_dict("records"):
        node, t = str(r["node"]), float(r["t"]) - t0
        block = r.get("block")
        reachable = n - len(block) if isinstance(block, list) else n
        if reachable <= n // 2 and node not in cut:
            cut[node] = t
        elif reachable > n // 2 and node in cut:
            out.append((node, cut.pop(node), t))
    out += [(node, start, t_end) for node, start in cut.items()]
    return out


def plot_timeline(events: pd.DataFrame, ax: Any = None, *, t0: float | None = None) -> Any:
    """Draw one row per node with its role bands and fault markers; returns the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * max(1, events["node"].nunique())))
    if events.empty:
        ax.set_xlabel("time (s)")
        return ax
    t0 = float(events["t"].min()) if t0 is None else t0
    bands = role_intervals(events, t0)
    nodes = sorted(
        {str(n) for n in events["node"].dropna() if not str(n).startswith("harness")},
        key=_node_key,
    )
    row = {name: i for i, name in enumerate(nodes)}
    for b in bands.to_dict("records"):
        node, role, term = str(b["node"]), str(b["role"]), float(b["term"])
        if node not in row:
            continue
        y = row[node]
        start, end = float(b["start"]), float(b["end"])
        ax.broken_barh(
            [(start, end - start)],
            (y - 0.4, 0.8),
            facecolors=ROLE_COLORS.get(role, "#ffffff"),
            edgecolor="none",
            hatch="//" if role in ("paused", "learner") else None,
        )
        if role == "leader" and not math.isnan(term):
            ax.text(start, y, f" T{int(term)}", va="center", ha="left", fontsize=8)
    cuts = _partitions(events, t0, len(nodes))
    for node, start, end in cuts:
        if node in row:
            y = row[node]
            ax.broken_barh(
                [(start, end - start)], (y - 0.45, 0.9), facecolors="none",
                edgecolor="#d62728", hatch="xx", linewidth=0.8,
            )  # fmt: skip
    present = set(bands["role"])
    handles = [
        Patch(facecolor=c, hatch="//" if r in ("paused", "learner") else None, label=r)
        for r, c in ROLE_COLORS.items()
        if r in present
    ]
    handles.append(Patch(facecolor="white", edgecolor="#999999", label="down"))
    if cuts:
        handles.append(
            Patch(
                facecolor="none", edgecolor="#d62728", hatch="xx", label="in a minority partition"
            )
        )
    if "action" in events.columns:
        marks = events[events["event"] == "inject"]
        for t in marks.loc[marks["action"].isin(["partition", "isolate", "heal"]), "t"]:
            ax.axvline(float(t) - t0, color="#d62728", linestyle=":", linewidth=1)
        for action, (marker, color, label) in MARKERS.items():
            sel = marks[(marks["action"] == action) & marks["node"].isin(nodes)]
            if not sel.empty:
                ax.scatter(
                    sel["t"] - t0, [row[n] for n in sel["node"]], marker=marker, color=color,
                    s=60, zorder=3, label=label,
                )  # fmt: skip
        handles += ax.get_legend_handles_labels()[0]
    ax.set_yticks(range(len(nodes)), nodes)
    ax.set_ylim(len(nodes) - 0.5, -0.5)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("node")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return ax
