// Small shared helpers: SVG element creation and the colours every view agrees on.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an SVG element with attributes (and append it to parent when given). */
export function svg(tag, attrs = {}, parent = null) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  if (parent) parent.appendChild(el);
  return el;
}

/** Set attributes, skipping unchanged ones: most frames change little, and the
 * browser then has less to restyle. */
export function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    const s = String(v);
    if (el.getAttribute(k) !== s) el.setAttribute(k, s);
  }
}

/** Set textContent only when it changed (same reason as setAttrs). */
export function setText(el, text) {
  const s = String(text);
  if (el.textContent !== s) el.textContent = s;
}

/** Role colours: the same in the cluster view, the table and the timeline. */
export const ROLE_COLOURS = {
  leader: "#f5b83d",
  follower: "#4f8fd6",
  candidate: "#e5484d",
  "pre-candidate": "#f08c5a",
  removed: "#59636e",
  unknown: "#3a4450",
};

export function roleColour(role) {
  return ROLE_COLOURS[role] || ROLE_COLOURS.unknown;
}

/** Message colours by family; a response is drawn hollow in its request's colour. */
export const MESSAGE_COLOURS = {
  append: "#3ecf8e",
  heartbeat: "#9aa7b4",
  vote: "#e5484d",
  pre_vote: "#f08c5a",
  read_index: "#b48ef0",
  snapshot: "#33c3f0",
  other: "#d0d6dc",
};

/** Colour and shape of a message type such as "vote_resp" or "snapshot_chunk". */
export function messageStyle(type) {
  const response = type.endsWith("_resp") || type === "snapshot_ack";
  const base = type.replace(/_resp$/, "");
  let colour = MESSAGE_COLOURS[base];
  if (!colour) colour = base.startsWith("snapshot") ? MESSAGE_COLOURS.snapshot : MESSAGE_COLOURS.other;
  return { colour, response };
}

/** Format seconds on the dashboard clock as "12.3 s" or "4:05". */
export function formatClock(t) {
  if (t == null) return "–";
  if (t < 600) return `${t.toFixed(1)} s`;
  const m = Math.floor(t / 60);
  const s = Math.floor(t % 60);
  return `${m}:${String(s).padStart(2, "0")}`;
}

export function fmt(value, fallback = "–") {
  return value === null || value === undefined ? fallback : String(value);
}

/** The leader that counts: of the nodes answering as leader, the one with the highest
 * term (a deposed leader cut off from the rest may not know yet that it is one). */
export function currentLeader(nodes) {
  let best = null;
  for (const n of nodes) {
    if (n.role !== "leader" || n.process !== "alive" || !n.answering) continue;
    if (!best || (n.term ?? 0) > (best.term ?? 0)) best = n;
  }
  return best;
}
