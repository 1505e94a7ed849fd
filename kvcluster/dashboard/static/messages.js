// Messages as dots travelling along the links. Every trip takes the same TRIP_MS,
// whatever the real latency (microseconds on one host), so a person can follow
// them; past DOTS_PER_LINK in one frame a link shows a rate instead, so the page
// keeps up with a cluster under full load.

import { offset } from "./cluster.js";
import { messageStyle, setAttrs, svg } from "./util.js";

const TRIP_MS = 400;
const DOTS_PER_LINK = 20;
const MAX_DOTS = 800; // beyond this, new dots are not drawn (the rates still are)
const RATE_FADE_MS = 1500;

export class MessageView {
  constructor(root, cluster) {
    this.dotsLayer = root.querySelector("#dots");
    this.ratesLayer = root.querySelector("#rates");
    this.cluster = cluster;
    this.dots = []; // {el, a, b, start, stopAt}
    this.pool = [];
    this.rates = new Map(); // "src>dst:type" -> {el, until}
    this.counts = { total: 0, byType: {} };
  }

  /** Schedule the dots of one frame, spread over the frame's interval. */
  add(messages, links, interval, now) {
    const faults = new Map((links || []).map((l) => [`${l.src}>${l.dst}`, l]));
    const perLink = new Map();
    for (const m of messages || []) {
      const key = `${m.src}>${m.dst}`;
      perLink.set(key, (perLink.get(key) || 0) + m.count);
      this.counts.total += m.count;
      this.counts.byType[m.type] = (this.counts.byType[m.type] || 0) + m.count;
    }
    for (const m of messages || []) {
      const a = this.cluster.position(m.src);
      const b = this.cluster.position(m.dst);
      if (!a || !b || m.count <= 0) continue;
      const fault = faults.get(`${m.src}>${m.dst}`);
      const busy = perLink.get(`${m.src}>${m.dst}`) > DOTS_PER_LINK;
      if (busy) this.showRate(m, a, b, interval, now);
      const shown = busy ? Math.min(3, m.count) : m.count;
      for (let k = 0; k < shown; k++) {
        const start = now + (interval * 1000 * k) / shown;
        this.spawn(m.type, a, b, start, stopFraction(fault));
      }
    }
  }

  spawn(type, a, b, start, stopAt) {
    if (this.dots.length >= MAX_DOTS) return;
    const { colour, response } = messageStyle(type);
    const el = this.pool.pop() || svg("circle", {}, this.dotsLayer);
    setAttrs(el, {
      r: response ? 3.2 : 4,
      class: response ? "dot response" : "dot",
      fill: response ? "none" : colour,
      stroke: colour,
      "data-type": type,
      visibility: "hidden",
    });
    const side = offset(a, b, 5);
    this.dots.push({
      el, start, stopAt,
      a: { x: a.x + side.x, y: a.y + side.y },
      b: { x: b.x + side.x, y: b.y + side.y },
    });
  }

  /** A rate label at the link's middle: "append 480/s". */
  showRate(m, a, b, interval, now) {
    const key = `${m.src}>${m.dst}:${m.type}`;
    let entry = this.rates.get(key);
    if (!entry) {
      entry = { el: svg("text", { class: "rate" }, this.ratesLayer), until: 0 };
      this.rates.set(key, entry);
    }
    const side = offset(a, b, 12);
    const { colour } = messageStyle(m.type);
    const t = 0.62; // nearer the receiver: the two directions label different spots
    setAttrs(entry.el, {
      x: (a.x + (b.x - a.x) * t + side.x).toFixed(1),
      y: (a.y + (b.y - a.y) * t + side.y).toFixed(1),
      fill: colour,
      "data-link": `${m.src}>${m.dst}`,
      "data-type": m.type,
    });
    entry.el.textContent = `${m.type} ${Math.round(m.count / Math.max(interval, 0.01))}/s`;
    entry.until = now + RATE_FADE_MS;
  }

  /** Move every dot; recycle the finished ones. */
  animate(now) {
    const keep = [];
    for (const d of this.dots) {
      const f = (now - d.start) / TRIP_MS;
      if (f < 0) {
        keep.push(d);
        continue;
      }
      if (f >= d.stopAt) {
        setAttrs(d.el, { visibility: "hidden" });
        this.pool.push(d.el);
        continue;
      }
      const x = d.a.x + (d.b.x - d.a.x) * f;
      const y = d.a.y + (d.b.y - d.a.y) * f;
      // A dot that a fault stops fades out on its way to the cut.
      const fading = d.stopAt < 1 ? Math.max(0.15, 1 - f / d.stopAt) : 1;
      setAttrs(d.el, { cx: x.toFixed(1), cy: y.toFixed(1), visibility: "visible", opacity: fading.toFixed(2) });
      keep.push(d);
    }
    this.dots = keep;
    for (const [key, entry] of this.rates) {
      if (now > entry.until) {
        entry.el.remove();
        this.rates.delete(key);
      }
    }
  }

  /** Drop every dot (on reconnect: old positions may no longer exist). */
  clear() {
    for (const d of this.dots) d.el.remove();
    this.dots = [];
    this.pool = [];
    this.dotsLayer.replaceChildren();
    this.ratesLayer.replaceChildren();
    this.rates.clear();
  }
}

/** How far along its link a message gets: a cut stops it halfway, a lossy link
 * stops the lost share of them there too. */
function stopFraction(fault) {
  if (!fault) return 1;
  if (fault.cut) return 0.5;
  if (fault.drop > 0 && Math.random() < fault.drop) return 0.5;
  return 1;
}
