// The rolling timeline: one row per node, coloured by role, a new segment at every
// term, and every fault drawn as a marked vertical line. It is rebuilt a few times
// a second (not per animation frame): it moves slowly and a redraw is cheap.

import { roleColour, svg } from "./util.js";

const ROW = 20;
const GAP = 6;
const TOP = 34; // room for the fault labels
const LEFT = 44; // room for the node names
const KEEP_S = 330;
const EVENT_TRUST_S = 0.3; // how long a logged role change outranks the polled status // history kept in memory: the longest window plus a margin

export class Timeline {
  constructor(el) {
    this.el = el;
    this.window = 60;
    this.rows = new Map(); // name -> [{t0, t1, state, term}]
    this.faults = [];
    this.now = 0;
  }

  setWindow(seconds) {
    this.window = seconds;
  }

  /** Rebuild the segments before the page connected from the history's role events. */
  loadHistory(history, names, firstFrameT) {
    this.rows.clear();
    this.faults = [];
    for (const n of names) this.row(n); // rows in the cluster's order, not the events'
    const last = new Map();
    for (const e of (history && history.events) || []) {
      if ((e.event !== "role" && e.event !== "campaign") || !e.node || !e.role) continue;
      const row = this.row(e.node);
      const prev = last.get(e.node);
      if (prev) prev.t1 = e.t;
      const seg = { t0: e.t, t1: e.t, state: e.role, term: e.term };
      row.push(seg);
      last.set(e.node, seg);
    }
    for (const seg of last.values()) seg.t1 = firstFrameT;
    for (const f of (history && history.faults) || []) this.faults.push(f);
  }

  row(name) {
    if (!this.rows.has(name)) this.rows.set(name, []);
    return this.rows.get(name);
  }

  /** Extend each node's current segment, or start one when its state or term changed. */
  addFrame(frame) {
    this.now = frame.t;
    // Role changes between two polls (a campaign takes milliseconds) at the times
    // the nodes logged them, so even a short candidacy leaves its mark.
    for (const e of frame.events || []) {
      if ((e.event !== "role" && e.event !== "campaign") || !e.node || !e.role) continue;
      const row = this.row(e.node);
      const cur = row[row.length - 1];
      if (cur && e.t < cur.t0) continue;
      if (cur && cur.state === e.role && cur.term === e.term) continue;
      if (cur) cur.t1 = e.t;
      row.push({ t0: e.t, t1: e.t, state: e.role, term: e.term, fromEvent: true });
    }
    for (const n of frame.nodes) {
      const state = stateOf(n);
      const row = this.row(n.name);
      const cur = row[row.length - 1];
      const term = n.term ?? (cur ? cur.term : null);
      // A status polled just before the node logged a change is older than the
      // event: keep the event's segment rather than flicker back for one frame.
      const fresh = cur && cur.fromEvent && frame.t - cur.t0 < EVENT_TRUST_S && state !== "killed";
      if (cur && ((cur.state === state && cur.term === term) || fresh)) {
        cur.t1 = frame.t;
      } else {
        if (cur) cur.t1 = frame.t;
        row.push({ t0: frame.t, t1: frame.t, state, term });
      }
      while (row.length > 1 && row[0].t1 < frame.t - KEEP_S) row.shift();
    }
    for (const f of frame.faults || []) this.faults.push(f);
    while (this.faults.length && this.faults[0].t < frame.t - KEEP_S) this.faults.shift();
  }

  render() {
    const width = Math.max(400, Math.round(this.el.clientWidth || 1000));
    const names = [...this.rows.keys()];
    const height = TOP + names.length * (ROW + GAP) + 16;
    this.el.setAttribute("viewBox", `0 0 ${width} ${height}`);
    this.el.setAttribute("height", height);
    this.el.replaceChildren();
    drawDefs(this.el);
    // Until a whole window has passed, time runs from the left edge rather than
    // leaving most of the strip empty.
    const t1 = Math.max(this.now, this.earliest() + this.window);
    const t0 = t1 - this.window;
    const x = (t) => LEFT + ((t - t0) / this.window) * (width - LEFT - 8);
    this.drawAxis(x, t0, t1, height);
    names.forEach((name, i) => {
      const y = TOP + i * (ROW + GAP);
      svg("text", { class: "tl-name", x: 4, y: y + ROW * 0.7 }, this.el).textContent = name;
      const g = svg("g", { "data-timeline-node": name }, this.el);
      for (const s of this.rows.get(name)) {
        if (s.t1 < t0) continue;
        const xa = x(Math.max(s.t0, t0));
        const w = Math.max(1.5, x(s.t1) - xa);
        svg("rect", {
          x: xa, y, width: w, height: ROW, class: `tl-seg tl-${s.state}`,
          fill: segmentFill(s.state), "data-state": s.state, "data-term": s.term ?? "",
        }, g);
        if (w > 30 && s.term != null && s.state !== "killed") {
          svg("text", { class: "tl-term", x: xa + 4, y: y + ROW * 0.72 }, g).textContent = `t${s.term}`;
        }
      }
    });
    this.drawFaults(x, t0, height);
  }

  earliest() {
    let t = this.now;
    for (const row of this.rows.values()) if (row.length) t = Math.min(t, row[0].t0);
    return t;
  }

  drawAxis(x, t0, t1, height) {
    const step = this.window <= 30 ? 5 : this.window <= 60 ? 10 : 60;
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      if (t < 0) continue;
      svg("line", { class: "tl-grid", x1: x(t), x2: x(t), y1: TOP - 4, y2: height - 14 }, this.el);
      svg("text", { class: "tl-tick", x: x(t), y: height - 3 }, this.el).textContent = `${t} s`;
    }
  }

  drawFaults(x, t0, height) {
    let lane = 0;
    let lastX = -Infinity;
    for (const f of this.faults) {
      if (f.t < t0) continue;
      const fx = x(f.t);
      // Two labels close together go on alternate lanes so both stay readable.
      lane = fx - lastX < 90 ? (lane + 1) % 3 : 0;
      lastX = fx;
      const g = svg("g", { class: "tl-fault", "data-fault": f.what }, this.el);
      svg("line", { x1: fx, x2: fx, y1: 4 + lane * 10, y2: height - 14 }, g);
      svg("text", { x: fx + 3, y: 11 + lane * 10 }, g).textContent = f.what;
    }
  }
}

/** Hatch patterns: a killed or paused node's row is striped, not coloured. */
function drawDefs(el) {
  const defs = svg("defs", {}, el);
  for (const [id, colour] of [["hatch-killed", "#6b3a3a"], ["hatch-paused", "#5b5670"]]) {
    const p = svg("pattern", {
      id, width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)",
    }, defs);
    svg("rect", { width: 6, height: 6, fill: "#1d242c" }, p);
    svg("rect", { width: 3, height: 6, fill: colour }, p);
  }
}

/** What a timeline segment shows: the role, or why there is none. */
function stateOf(n) {
  if (n.process !== "alive") return n.process; // killed, paused, removed
  if (!n.answering || !n.role) return "silent";
  return n.role;
}

function segmentFill(state) {
  switch (state) {
    case "killed":
      return "url(#hatch-killed)";
    case "paused":
      return "url(#hatch-paused)";
    case "silent":
      return "#2a323b";
    default:
      return roleColour(state);
  }
}
