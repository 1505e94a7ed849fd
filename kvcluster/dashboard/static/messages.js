// Messages as dots travelling along the links. Every trip takes the same TRIP_MS,
// whatever the real latency (microseconds on one host), so a person can follow
// them; past DOTS_PER_LINK in one frame a link shows a rate instead, so the page
// keeps up with a cluster under full load.

import { offset } from "./cluster.js";
import { TRIP_MS } from "./replay.js";
import { messageStyle, setAttrs, svg } from "./util.js";

const DOTS_PER_LINK = 20;
const MAX_DOTS = 800; // beyond this, new dots are not drawn (the rates still are)
const RATE_FADE_MS = 1500;
const BUSY_DOTS = 2; // dots still drawn per busy link and frame, so the flow shows

export class MessageView {
  constructor(root, cluster, replay) {
    this.replay = replay; // a campaign's messages depart step by step
    this.dotsLayer = root.querySelector("#dots");
    this.ratesLayer = root.querySelector("#rates");
    this.cluster = cluster;
    this.dots = []; // {el, a, b, start, stopAt}
    this.pool = [];
    this.rates = new Map(); // "a|b" -> {band, el, title, label, until}
    // Busy links' bands go under the dots, their labels above.
    this.bandsLayer = svg("g", { id: "bands" });
    this.dotsLayer.before(this.bandsLayer);
    this.doc = root.ownerDocument;
    this.counts = { total: 0, byType: {} };
  }

  /** Schedule the dots of one frame, spread over the frame's interval. */
  add(messages, links, interval, now) {
    const faults = new Map((links || []).map((l) => [`${l.src}>${l.dst}`, l]));
    const perLink = new Map(); // "src>dst" -> [{type, count}]
    for (const m of messages || []) {
      if (m.count <= 0) continue;
      const key = `${m.src}>${m.dst}`;
      if (!perLink.has(key)) perLink.set(key, []);
      perLink.get(key).push(m);
      this.counts.total += m.count;
      this.counts.byType[m.type] = (this.counts.byType[m.type] || 0) + m.count;
    }
    const busyPairs = new Map(); // "a|b" (sorted) -> {a, b, lists: {"src>dst": list}}
    for (const [key, list] of perLink) {
      const [src, dst] = key.split(">");
      const a = this.cluster.position(src);
      const b = this.cluster.position(dst);
      if (!a || !b) continue;
      const total = list.reduce((s, m) => s + m.count, 0);
      let dots = list.flatMap((m) => Array(m.count).fill(m.type));
      if (total > DOTS_PER_LINK) {
        // Too many to follow: the pair gets a rate, and a few dots of the busiest
        // types still show which way the traffic goes.
        list.sort((x, y) => y.count - x.count);
        const pair = [src, dst].sort().join("|");
        if (!busyPairs.has(pair)) busyPairs.set(pair, { names: [src, dst].sort() });
        dots = list.slice(0, BUSY_DOTS).map((m) => m.type);
      }
      const fault = faults.get(key);
      dots.forEach((type, k) => {
        const start = this.replay.departure(type, now) + (interval * 1000 * k) / dots.length;
        this.spawn(type, a, b, start, stopFraction(fault));
      });
    }
    for (const [pair, { names }] of busyPairs) {
      const both = [`${names[0]}>${names[1]}`, `${names[1]}>${names[0]}`];
      this.showRate(pair, names, both.map((k) => [k, perLink.get(k) || []]), interval, now);
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

  /** A busy pair of nodes: the link drawn as a band in its dominant message
   * colour, and one short label at its middle with both directions' total rate
   * (the exact rates by direction and type in its tooltip). One label per pair,
   * not per direction and type: around a leader of nine nodes they would overlap. */
  showRate(pair, names, directions, interval, now) {
    const a = this.cluster.position(names[0]);
    const b = this.cluster.position(names[1]);
    let entry = this.rates.get(pair);
    if (!entry) {
      entry = {
        band: svg("line", { class: "busy-band" }, this.bandsLayer),
        el: svg("text", { class: "rate" }, this.ratesLayer),
        until: 0,
      };
      entry.title = svg("title", {}, entry.el);
      entry.label = this.doc.createTextNode("");
      entry.el.appendChild(entry.label);
      this.rates.set(pair, entry);
    }
    const per = (count) => Math.round(count / Math.max(interval, 0.01));
    const byType = new Map();
    const detail = [];
    let total = 0;
    for (const [key, list] of directions) {
      for (const m of list) {
        byType.set(m.type, (byType.get(m.type) || 0) + m.count);
        total += m.count;
      }
      if (list.length) detail.push(`${key.replace(">", "→")}: ${list.map((m) => `${m.type} ${per(m.count)}/s`).join(", ")}`);
    }
    const [topType] = [...byType.entries()].sort((x, y) => y[1] - x[1])[0];
    const colour = messageStyle(topType).colour;
    const rate = per(total);
    setAttrs(entry.band, {
      x1: a.x, y1: a.y, x2: b.x, y2: b.y, stroke: colour,
      "stroke-width": Math.min(8, 1.5 + 1.6 * Math.log10(Math.max(rate, 1))).toFixed(1),
    });
    setAttrs(entry.el, {
      x: ((a.x + b.x) / 2).toFixed(1), y: ((a.y + b.y) / 2 + 4).toFixed(1), fill: colour,
      "data-link": pair, "data-type": topType, "data-rate": rate,
    });
    entry.label.nodeValue = `${rate}/s`;
    entry.title.textContent = detail.join("\n");
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
        entry.band.remove();
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
    this.bandsLayer.replaceChildren();
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
