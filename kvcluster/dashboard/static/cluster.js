// The cluster drawn as nodes on a circle with the links between them.
// Each node is one <g data-node=...> whose data attributes mirror what the feed
// says (role, term, process), so a browser test can read the view as a person does.

import { currentLeader, roleColour, setAttrs, setText, svg } from "./util.js";

const CENTRE = { x: 320, y: 285 };
const RING = 8; // the election-timer ring sits this far outside the node's body

/** Node positions on a circle, node 0 at the top, clockwise. */
export function layout(count) {
  const radius = count <= 3 ? 170 : count <= 5 ? 205 : 225;
  const r = count <= 5 ? 42 : count <= 7 ? 36 : 30;
  return Array.from({ length: count }, (_, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / count;
    return { x: CENTRE.x + radius * Math.cos(a), y: CENTRE.y + radius * Math.sin(a), r };
  });
}

export class ClusterView {
  constructor(root, { onNodeClick, replay }) {
    this.replay = replay; // role changes between two polls, shown step by step
    this.links = root.querySelector("#links");
    this.nodesLayer = root.querySelector("#nodes");
    this.onNodeClick = onNodeClick;
    this.glyphs = new Map(); // name -> {g, parts, node}
    this.positions = new Map(); // name -> {x, y, r}
    this.names = [];
    this.groupB = new Set();
  }

  /** Build (or rebuild, when membership changed) the glyphs and links. */
  ensure(nodes) {
    const names = nodes.map((n) => n.name);
    if (names.join(",") === this.names.join(",")) return;
    this.names = names;
    this.links.replaceChildren();
    this.nodesLayer.replaceChildren();
    this.glyphs.clear();
    this.positions.clear();
    const pos = layout(nodes.length);
    nodes.forEach((n, i) => this.positions.set(n.name, pos[i]));
    for (let i = 0; i < names.length; i++) {
      for (let j = i + 1; j < names.length; j++) {
        const a = pos[i];
        const b = pos[j];
        svg("line", {
          class: "link", x1: a.x, y1: a.y, x2: b.x, y2: b.y,
          "data-link": `${names[i]}-${names[j]}`,
        }, this.links);
      }
    }
    this.faultLayer = svg("g", { id: "link-faults" }, this.links);
    nodes.forEach((n) => this.glyphs.set(n.name, this.buildGlyph(n, this.positions.get(n.name))));
  }

  buildGlyph(node, p) {
    const g = svg("g", {
      class: "node", transform: `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})`,
      "data-node": node.name, "data-index": node.index, tabindex: 0,
    }, this.nodesLayer);
    g.addEventListener("click", () => this.onNodeClick(node.index));
    const parts = {
      isolation: svg("circle", { class: "isolation", r: p.r + RING + 9 }, g),
      track: svg("circle", { class: "timer-track", r: p.r + RING }, g),
      timer: svg("path", { class: "timer-arc" }, g),
      body: svg("circle", { class: "body", r: p.r }, g),
      // Under the name, so a killed node still says which one it is.
      cross: svg("path", {
        class: "cross",
        d: `M${-p.r * 0.55},${-p.r * 0.55}L${p.r * 0.55},${p.r * 0.55}M${p.r * 0.55},${-p.r * 0.55}L${-p.r * 0.55},${p.r * 0.55}`,
      }, g),
      name: svg("text", { class: "name", y: -4 }, g),
      term: svg("text", { class: "term", y: 15 }, g),
      badge: svg("text", { class: "badge", y: -p.r - RING - 8 }, g),
      group: svg("text", { class: "group-tag", x: p.r * 0.9, y: -p.r * 0.8 }, g),
      role: svg("text", { class: "role-line", y: p.r + RING + 17 }, g),
      bars: svg("g", { class: "bars", transform: `translate(-42,${p.r + RING + 24})` }, g),
      indexes: svg("text", { class: "indexes", y: p.r + RING + 50 }, g),
      progress: svg("text", { class: "progress-line", y: p.r + RING + 63 }, g),
    };
    parts.barLast = svg("rect", { class: "bar last", height: 3, y: 0 }, parts.bars);
    parts.barCommit = svg("rect", { class: "bar commit", height: 3, y: 5 }, parts.bars);
    parts.barApplied = svg("rect", { class: "bar applied", height: 3, y: 10 }, parts.bars);
    svg("title", {}, g).textContent = `${node.name}: click to move it between partition groups A and B`;
    return { g, parts, r: p.r, node, arrived: 0 };
  }

  /** Apply one feed frame (nodes and faulted links). */
  update(frame, arrivedAt) {
    this.ensure(frame.nodes);
    this.leader = currentLeader(frame.nodes);
    this.scale = indexScale(frame.nodes);
    for (const node of frame.nodes) {
      const glyph = this.glyphs.get(node.name);
      glyph.node = node;
      glyph.arrived = arrivedAt;
      this.drawNode(glyph, node, arrivedAt);
    }
    this.drawFaults(frame.links || []);
  }

  /** The role and term drawn for a node right now (the replay's, or its status). */
  drawn(name) {
    const g = this.glyphs.get(name);
    if (!g) return { role: null, term: null, leader: null, vote: null };
    return { role: g.role ?? null, term: g.term ?? null, leader: g.leaderName ?? null, vote: g.vote ?? null };
  }

  drawNode(glyph, node, now) {
    const { g, parts } = glyph;
    const { scale, leader } = this;
    const answering = node.process === "alive" && node.answering;
    // A node that stopped answering (killed, paused) is drawn so at once.
    const step = answering ? this.replay.stateOf(node.name, now) : null;
    const role = step ? step.role : answering ? node.role : null;
    const term = step ? step.term : node.term;
    const leaderName = step ? step.leader : node.leader;
    const vote = step ? step.vote : node.vote;
    Object.assign(glyph, { role, term, leaderName, vote });
    setAttrs(g, {
      "data-role": role ?? "none",
      "data-term": term ?? "",
      "data-replay": step ? "true" : "false",
      "data-process": node.process,
      "data-answering": node.answering,
      "data-isolated": node.isolated,
      "data-group": this.groupB.has(node.index) ? "B" : "A",
      class: `node process-${node.process}${node.answering ? "" : " silent"}${node.isolated ? " isolated" : ""}`,
    });
    setAttrs(parts.body, { fill: roleColour(role ?? (node.process === "removed" ? "removed" : "unknown")) });
    setText(parts.name, node.name);
    setText(parts.term, term == null ? "" : `term ${term}`);
    setText(parts.badge, badgeText(node));
    setText(parts.group, this.groupB.has(node.index) ? "B" : "");
    setText(parts.role, roleLine(node.process, role, leaderName, vote));
    const w = (v) => (v == null ? 0 : Math.max(1, 84 * scale(v)));
    setAttrs(parts.barLast, { width: w(node.last_index) });
    setAttrs(parts.barCommit, { width: w(node.commit_index) });
    setAttrs(parts.barApplied, { width: w(node.applied_index) });
    setText(parts.indexes, node.last_index == null
      ? "" : `${node.last_index} · ${node.commit_index} · ${node.applied_index}`);
    // The leader's view of this follower, once that leader is drawn as leader.
    const shownLeader = leader && this.glyphs.get(leader.name)?.role === "leader";
    const pr = shownLeader && leader.progress && leader.progress[node.name];
    setText(parts.progress, pr ? `match ${pr.match} · next ${pr.next}` : "");
  }

  /** Faulted links: the src half of the line, since a fault acts on what src sends. */
  drawFaults(links) {
    this.faultLayer.replaceChildren();
    for (const l of links) {
      const a = this.positions.get(l.src);
      const b = this.positions.get(l.dst);
      if (!a || !b) continue;
      const kind = l.cut ? "cut" : l.drop > 0 ? "drop" : "delay";
      const mid = { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
      const side = offset(a, b, 3);
      svg("line", {
        class: `fault fault-${kind}`, x1: a.x + side.x, y1: a.y + side.y, x2: mid.x + side.x, y2: mid.y + side.y,
        "data-fault-link": `${l.src}>${l.dst}`, "data-cut": l.cut, "data-drop": l.drop, "data-delay": l.delay,
      }, this.faultLayer);
      const at = { x: a.x + (b.x - a.x) * 0.36 + side.x * 4, y: a.y + (b.y - a.y) * 0.36 + side.y * 4 };
      const label = svg("text", { class: `fault-label fault-${kind}`, x: at.x, y: at.y }, this.faultLayer);
      label.textContent = l.cut ? "✂" : l.drop > 0 ? `drop ${Math.round(l.drop * 100)}%` : `+${l.delay.toFixed(2)} s`;
      if (!l.cut && l.drop > 0 && l.delay > 0) label.textContent += ` +${l.delay.toFixed(2)} s`;
    }
  }

  /** Called every animation frame: timer rings move smoothly between feed frames. */
  animate(now) {
    // While a campaign replays (and one frame after), roles change between frames.
    const replaying = this.replay.active(now - 100);
    for (const glyph of this.glyphs.values()) {
      const n = glyph.node;
      if (replaying) this.drawNode(glyph, n, now);
      const ring = glyph.r + RING;
      if (glyph.role === "candidate" || glyph.role === "pre-candidate") {
        // Its timer fired: the whole ring, in the campaign's colour.
        setAttrs(glyph.parts.timer, { d: arc(ring, 0.9999), class: `timer-arc campaign ${glyph.role}` });
        continue;
      }
      const running = n.process === "alive" && n.answering && n.election_timeout && n.election_elapsed != null;
      if (!running) {
        const full = glyph.role === "leader" && n.process === "alive" && n.answering;
        setAttrs(glyph.parts.timer, { d: full ? arc(ring, 0.9999) : "", class: full ? "timer-arc leader" : "timer-arc" });
        continue;
      }
      const elapsed = n.election_elapsed + Math.max(0, now - glyph.arrived) / 1000;
      const f = Math.min(1, elapsed / n.election_timeout);
      setAttrs(glyph.parts.timer, {
        d: arc(ring, f),
        class: `timer-arc ${f > 0.85 ? "hot" : f > 0.6 ? "warm" : ""}`,
        "data-fraction": f.toFixed(2),
      });
    }
  }

  /** What the picture shows now, node by node: the header counts leaders from it. */
  shown() {
    return [...this.glyphs.values()].map((g) => ({
      name: g.node.name, role: g.role, term: g.term, process: g.node.process, answering: g.node.answering,
    }));
  }

  position(name) {
    return this.positions.get(name);
  }

  setGroupB(groupB) {
    this.groupB = groupB;
  }
}

/** Map an index to 0..1 between the slowest node's applied index and the longest log,
 * so a lagging follower stands out even when the indexes are in the thousands. */
function indexScale(nodes) {
  const seen = nodes.filter((n) => n.last_index != null);
  if (!seen.length) return () => 0;
  const hi = Math.max(...seen.map((n) => n.last_index));
  const lo = Math.max(0, Math.min(...seen.map((n) => n.applied_index ?? n.commit_index ?? 0)) - 5);
  return (v) => (hi <= lo ? 1 : Math.max(0, Math.min(1, (v - lo) / (hi - lo))));
}

function badgeText(node) {
  if (node.process === "killed") return "killed";
  if (node.process === "paused") return "paused";
  if (node.process === "removed") return "removed";
  if (node.isolated) return "isolated";
  if (!node.answering) return "not answering";
  return "";
}

function roleLine(process, role, leader, vote) {
  if (!role) return process === "alive" ? "?" : "";
  if (role === "leader") return "leader";
  const parts = [role === "follower" && leader ? `follows ${leader}` : role];
  if (vote && (role !== "follower" || !leader)) parts.push(`voted ${vote}`);
  return parts.join(" · ");
}

/** An arc of the given radius from 12 o'clock, clockwise, for fraction f of a turn. */
function arc(radius, f) {
  if (f <= 0) return "";
  const a = -Math.PI / 2 + 2 * Math.PI * Math.min(f, 0.9999);
  const x = radius * Math.cos(a);
  const y = radius * Math.sin(a);
  return `M0,${-radius}A${radius},${radius} 0 ${f > 0.5 ? 1 : 0} 1 ${x.toFixed(2)},${y.toFixed(2)}`;
}

/** A small perpendicular offset (to the right of a->b), so the two directions of a
 * link do not draw on top of each other. */
export function offset(a, b, d) {
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const len = Math.hypot(dx, dy) || 1;
  return { x: (-dy / len) * d, y: (dx / len) * d };
}
