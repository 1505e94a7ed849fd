// kvcluster live view: connects to the harness's feed and draws it.
// Plain ES modules, no build step, nothing fetched from elsewhere: the page works
// offline and inside a notebook's iframe.

import { LoadCharts } from "./charts.js";
import { ClusterView } from "./cluster.js";
import { Controls } from "./controls.js";
import { MessageView } from "./messages.js";
import { Replay } from "./replay.js";
import { Timeline } from "./timeline.js";
import { formatClock, MESSAGE_COLOURS, ROLE_COLOURS, setAttrs, setText } from "./util.js";

const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 5000;
const CONTROL_TIMEOUT_MS = 60000; // the Cluster's calls block up to their own deadlines
const SLOW_REDRAW_MS = 250; // timeline and charts: a few times a second is plenty
const ACTIVITY_KEEP = 200;

const page = {
  socket: null,
  retryMs: RECONNECT_MIN_MS,
  nextId: 1,
  pending: new Map(), // control id -> {resolve, timer}
  lastFrame: null,
  lastFrameAt: 0,
  lastSlowRedraw: 0,
};

const stage = document.getElementById("cluster");
const replay = new Replay();
const cluster = new ClusterView(stage, { onNodeClick: (i) => controls.toggleGroup(i), replay });
const messages = new MessageView(stage, cluster, replay);
const timeline = new Timeline(document.getElementById("timeline"));
const charts = new LoadCharts(
  document.getElementById("chart-ops"),
  document.getElementById("chart-latency"),
  document.getElementById("load-summary"),
);
const controls = new Controls(document, {
  drawn: (name) => cluster.drawn(name),
  request: sendControl,
  log: activity,
  onGroupsChanged: (groupB) => {
    cluster.setGroupB(groupB);
    if (page.lastFrame) cluster.update(page.lastFrame, page.lastFrameAt);
  },
});

// ---------------------------------------------------------------- the socket

/** The feed's address: beside the page (so a proxy prefix is kept), same token. */
function feedUrl() {
  const token = new URLSearchParams(location.search).get("token") || "";
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = `?token=${encodeURIComponent(token)}`;
  return url.toString();
}

function connect() {
  setConnection("connecting", "connecting…");
  const ws = new WebSocket(feedUrl());
  page.socket = ws;
  ws.onopen = () => {
    page.retryMs = RECONNECT_MIN_MS;
    page.everOpened = true;
    setConnection("open", "live");
  };
  ws.onmessage = (e) => onMessage(e.data);
  ws.onclose = (e) => {
    page.socket = null;
    failPending("the connection to the dashboard closed before an answer came");
    // A refused upgrade (a wrong token) looks like any failed connection to the page,
    // so after a few failures without ever connecting, say what to check.
    page.failures = page.everOpened ? 0 : (page.failures || 0) + 1;
    const refused = e.code === 4403 || e.code === 1008 || page.failures >= 3;
    const hint = refused ? " (is the harness running, and the token in the address right?)" : "";
    setConnection("closed", `reconnecting in ${(page.retryMs / 1000).toFixed(1)} s${hint}`);
    setTimeout(connect, page.retryMs);
    page.retryMs = Math.min(RECONNECT_MAX_MS, page.retryMs * 2);
  };
}

function onMessage(data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return; // not ours to crash on
  }
  if (msg.type === "state") onFrame(msg);
  else if (msg.type === "result") onResult(msg);
}

/** Send a control and resolve with the server's {ok, message, value}. */
function sendControl(payload) {
  return new Promise((resolve) => {
    if (!page.socket || page.socket.readyState !== WebSocket.OPEN) {
      resolve({ ok: false, message: "not connected to the dashboard; wait for it to reconnect" });
      return;
    }
    const id = page.nextId++;
    const timer = setTimeout(() => {
      page.pending.delete(id);
      resolve({ ok: false, message: "no answer from the dashboard in time" });
    }, CONTROL_TIMEOUT_MS);
    page.pending.set(id, { resolve, timer });
    page.socket.send(JSON.stringify({ id, ...payload }));
  });
}

function onResult(msg) {
  const p = page.pending.get(msg.id);
  if (!p) return;
  clearTimeout(p.timer);
  page.pending.delete(msg.id);
  p.resolve(msg);
}

function failPending(message) {
  for (const [id, p] of page.pending) {
    clearTimeout(p.timer);
    p.resolve({ ok: false, message });
    page.pending.delete(id);
  }
}

// ---------------------------------------------------------------- frames

function onFrame(frame) {
  const now = performance.now();
  const interval = page.lastFrame ? Math.min(1, Math.max(0.02, frame.t - page.lastFrame.t)) : 0.1;
  if (frame.history) {
    // A first frame (a new page, or after a reconnect): start the drawing afresh.
    messages.clear();
    timeline.loadHistory(frame.history, frame.nodes.map((n) => n.name), frame.t);
    for (const f of (frame.history.faults || []).slice(-20)) activity(`${formatClock(f.t)} ${f.what}`, "fault");
  }
  page.lastFrame = frame;
  page.lastFrameAt = now;
  if (!frame.history) replay.add(frame, now, (name) => cluster.drawn(name));
  cluster.update(frame, now);
  messages.add(frame.messages, frame.links, interval, now);
  timeline.addFrame(frame);
  charts.addFrame(frame);
  controls.update(frame);
  drawHeader(frame);
  for (const f of frame.faults || []) activity(`${formatClock(f.t)} ${f.what}`, "fault");
  for (const e of frame.events || []) if (isNotable(e)) activity(describeEvent(e), "event");
}

/** The facts at the top: how many leaders the picture shows (more than one is worth
 * seeing: a deposed leader that has not heard yet), which one, the highest term. */
function drawHeader(frame) {
  drawLeaders();
  const preset = document.getElementById("preset");
  const et = frame.election_timeout || [];
  setText(preset, `${frame.preset || "default"} · heartbeat ${ms(frame.heartbeat_interval)} · election ${ms(et[0])}–${ms(et[1])}`);
  setAttrs(preset, { "data-preset": frame.preset || "" });
  setText(document.getElementById("clock"), `t = ${formatClock(frame.t)}`);
  document.body.dataset.frameT = frame.t.toFixed(2);
}

/** Leader and term from what the picture shows (so they agree while a campaign replays). */
function drawLeaders() {
  const seen = cluster.shown().filter((n) => n.process === "alive" && n.answering && n.role);
  const leaders = seen.filter((n) => n.role === "leader");
  const top = seen.reduce((m, n) => Math.max(m, n.term ?? 0), 0);
  const count = document.getElementById("leader-count");
  setText(count, leaders.length);
  setAttrs(count, { "data-count": leaders.length, class: leaders.length === 1 ? "" : "warn" });
  const name = document.getElementById("leader-name");
  const leader = leaders.length === 1 ? leaders[0].name : "";
  setText(name, leader || (leaders.length ? leaders.map((n) => n.name).join(", ") : "none"));
  setAttrs(name, { "data-leader": leader });
  const term = document.getElementById("term-max");
  setText(term, top || "–");
  setAttrs(term, { "data-term": top || "" });
}

function ms(seconds) {
  if (seconds == null) return "?";
  return seconds >= 1 ? `${seconds} s` : `${Math.round(seconds * 1000)} ms`;
}

// ---------------------------------------------------------------- activity list

const NOTABLE = new Set(["role", "leader", "campaign", "step_down", "removed", "membership", "snapshot"]);

function isNotable(e) {
  return NOTABLE.has(e.event);
}

function describeEvent(e) {
  const when = formatClock(e.t);
  switch (e.event) {
    case "role":
      return `${when} ${e.node} is ${e.role} (term ${e.term})`;
    case "leader":
      return `${when} ${e.node} learns the leader is ${e.leader} (term ${e.term})`;
    case "campaign":
      return `${when} ${e.node} campaigns as ${e.role} for term ${e.for_term ?? e.term}`;
    case "step_down":
      return `${when} ${e.node} steps down (${e.reason}, term ${e.term})`;
    default:
      return `${when} ${e.node} ${e.event} (term ${e.term})`;
  }
}

function activity(text, kind) {
  const list = document.getElementById("activity");
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  list.prepend(li);
  while (list.childElementCount > ACTIVITY_KEEP) list.lastElementChild.remove();
}

// ---------------------------------------------------------------- drawing loop

function tick(now) {
  cluster.animate(now);
  if (replay.active(now - 100)) drawLeaders();
  messages.animate(now);
  if (now - page.lastSlowRedraw > SLOW_REDRAW_MS && page.lastFrame) {
    page.lastSlowRedraw = now;
    timeline.render();
    charts.render();
  }
  requestAnimationFrame(tick);
}

function setConnection(state, text) {
  const el = document.getElementById("conn");
  setAttrs(el, { "data-state": state });
  setText(el, text);
}

function drawLegend() {
  const legend = document.getElementById("legend");
  const item = (colour, label, hollow = false) =>
    `<span class="key"><i style="${hollow ? `border:2px solid ${colour}` : `background:${colour}`}"></i>${label}</span>`;
  legend.innerHTML = [
    ...["leader", "follower", "pre-candidate", "candidate"].map((r) => item(ROLE_COLOURS[r], r)),
    `<span class="sep"></span>`,
    item(MESSAGE_COLOURS.append, "append"),
    item(MESSAGE_COLOURS.heartbeat, "heartbeat"),
    item(MESSAGE_COLOURS.pre_vote, "pre-vote"),
    item(MESSAGE_COLOURS.vote, "vote"),
    item(MESSAGE_COLOURS.heartbeat, "response", true),
    `<span class="sep"></span>`,
    `<span class="key">ring: election timer</span>`,
    `<span class="key">bars: last · commit · applied</span>`,
  ].join("");
}

function wireTimelineWindow() {
  const seg = document.getElementById("timeline-window");
  seg.addEventListener("click", (e) => {
    const b = e.target.closest("button[data-window]");
    if (!b) return;
    for (const o of seg.querySelectorAll("button")) o.classList.toggle("on", o === b);
    timeline.setWindow(Number(b.dataset.window));
    timeline.render();
  });
}

drawLegend();
wireTimelineWindow();
connect();
requestAnimationFrame(tick);
