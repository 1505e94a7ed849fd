// Client throughput and latency while a load runs: two small line charts over the
// last minute. A gap in the line is a time without load.

import { svg } from "./util.js";

const WINDOW_S = 60;
const W = 480;
const H = 140;
const PAD = { l: 44, r: 8, t: 18, b: 20 };

export class LoadCharts {
  constructor(opsEl, latencyEl, summaryEl) {
    this.opsEl = opsEl;
    this.latencyEl = latencyEl;
    this.summaryEl = summaryEl;
    this.samples = []; // {t, running, ops, p50, p99}
  }

  addFrame(frame) {
    const l = frame.load || {};
    this.samples.push({
      t: frame.t, running: !!l.running, ops: l.ops_per_s ?? null, p50: l.p50_ms ?? null, p99: l.p99_ms ?? null,
    });
    while (this.samples.length && this.samples[0].t < frame.t - WINDOW_S - 5) this.samples.shift();
    this.summaryEl.textContent = l.running
      ? `${l.clients} clients · ${Math.round(l.ops_per_s ?? 0)} ops/s · p50 ${ms(l.p50_ms)} · p99 ${ms(l.p99_ms)}`
      : "not running: start a load below the cluster";
    this.summaryEl.dataset.running = String(!!l.running);
  }

  render() {
    // Until a minute has passed, time runs from the left edge (as in the timeline).
    const first = this.samples.length ? this.samples[0].t : 0;
    const last = this.samples.length ? this.samples[this.samples.length - 1].t : 0;
    const now = Math.max(last, first + WINDOW_S);
    drawChart(this.opsEl, this.samples, now, [{ key: "ops", colour: "#3ecf8e", label: "ops/s" }], "ops/s");
    drawChart(this.latencyEl, this.samples, now, [
      { key: "p50", colour: "#4f8fd6", label: "p50" },
      { key: "p99", colour: "#f5b83d", label: "p99" },
    ], "ms");
  }
}

function drawChart(el, samples, now, series, unit) {
  el.replaceChildren();
  const t0 = now - WINDOW_S;
  const visible = samples.filter((s) => s.t >= t0);
  let top = 0;
  for (const s of visible) for (const { key } of series) if (s.running && s[key] != null) top = Math.max(top, s[key]);
  top = niceCeil(top || 1);
  const x = (t) => PAD.l + ((t - t0) / WINDOW_S) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - (v / top) * (H - PAD.t - PAD.b);
  for (const v of [0, top / 2, top]) {
    svg("line", { class: "chart-grid", x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v) }, el);
    svg("text", { class: "chart-tick", x: PAD.l - 4, y: y(v) + 3 }, el).textContent = short(v);
  }
  svg("text", { class: "chart-unit", x: PAD.l, y: 11 }, el).textContent = unit;
  series.forEach(({ key, colour, label }, i) => {
    svg("path", { class: "chart-line", d: linePath(visible, key, x, y), stroke: colour }, el);
    if (series.length === 1) return; // the unit names it already
    svg("text", { class: "chart-key", x: W - PAD.r - 40 * (series.length - i), y: 11, fill: colour }, el)
      .textContent = label;
  });
  if (!visible.some((s) => s.running)) {
    svg("text", { class: "chart-empty", x: W / 2, y: H / 2 }, el).textContent = "no load running";
  }
}

/** An SVG path through the samples of one series, broken where there was no load. */
function linePath(samples, key, x, y) {
  let d = "";
  let pen = false;
  for (const s of samples) {
    if (!s.running || s[key] == null) {
      pen = false;
      continue;
    }
    d += `${pen ? "L" : "M"}${x(s.t).toFixed(1)},${y(s[key]).toFixed(1)}`;
    pen = true;
  }
  return d;
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function short(v) {
  if (v >= 1000) return `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)}k`;
  return v >= 10 ? String(Math.round(v)) : v.toFixed(1).replace(/\.0$/, "");
}

function ms(v) {
  return v == null ? "–" : `${v.toFixed(1)} ms`;
}
