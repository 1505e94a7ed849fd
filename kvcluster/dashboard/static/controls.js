// The controls: every button sends one request over the WebSocket and shows the
// server's answer next to it (and in the activity list), so a person always sees
// whether the fault was applied.

import { currentLeader, fmt, roleColour, setAttrs, setText } from "./util.js";

const NODE_ACTIONS = ["kill", "restart", "pause", "resume"];

export class Controls {
  constructor(doc, { request, log, onGroupsChanged, drawn }) {
    this.drawn = drawn; // (name) -> the role, term, vote and leader the picture shows
    this.doc = doc;
    this.request = request; // (payload) -> Promise<result>
    this.log = log;
    this.onGroupsChanged = onGroupsChanged;
    this.frame = null;
    this.groupB = new Set();
    this.tableNames = "";
    this.wire();
  }

  $(sel) {
    return this.doc.querySelector(sel);
  }

  wire() {
    const on = (action, fn) => this.$(`[data-action="${action}"]`).addEventListener("click", fn);
    on("heal", () => this.run("network", { action: "heal" }, "heal"));
    on("split-leader", () => this.splitLeader());
    on("partition", () => this.partition());
    on("link", () => this.linkFault());
    on("load-start", () => {
      const clients = Number(this.$("#load-clients").value);
      this.run("client", { action: "load_start", clients }, `start a load of ${clients} clients`);
    });
    on("load-stop", () => this.run("client", { action: "load_stop" }, "stop the load"));
    on("put", () => {
      const key = this.$("#kv-key").value;
      const value = this.$("#kv-value").value;
      this.run("client", { action: "put", key, value }, `put ${key}`);
    });
    on("get", () => {
      const key = this.$("#kv-key").value;
      this.run("client", { action: "get", key }, `get ${key}`);
    });
    this.$("#link-kind").addEventListener("change", (e) => {
      this.$("#link-value").value = e.target.value === "delay" ? "0.2" : "0.5";
      this.$("#link-value").disabled = e.target.value === "cut";
    });
    this.$("#link-value").disabled = true;
    this.$("#node-table tbody").addEventListener("click", (e) => {
      const b = e.target.closest("button[data-action]");
      if (!b) return;
      const node = Number(b.dataset.node);
      this.run("nodes", { action: b.dataset.action, node }, `${b.dataset.action} n${node}`);
    });
  }

  /** Send a control; show "…" while it runs (the Cluster's calls can take seconds),
   * then its answer. */
  async run(area, payload, what) {
    const out = this.$(`[data-result-for="${area}"]`);
    setAttrs(out, { "data-state": "pending", "data-action": payload.action });
    out.textContent = `${what}…`;
    let result;
    try {
      result = await this.request(payload);
    } catch (err) {
      result = { ok: false, message: String(err.message || err) };
    }
    setAttrs(out, { "data-state": result.ok ? "ok" : "error" });
    let text = result.message || (result.ok ? what : `${what} failed`);
    if (payload.action === "get" && result.ok) text = `${payload.key} = ${JSON.stringify(result.value)}`;
    out.textContent = `${result.ok ? "✓" : "✗"} ${text}`;
    this.log(text === what ? what : `${what}: ${text}`, result.ok ? "ok" : "error");
    return result;
  }

  splitLeader() {
    const nodes = this.frame ? this.frame.nodes : [];
    const leader = currentLeader(nodes);
    if (!leader) {
      this.local("network", "there is no leader to split off right now; wait for one");
      return;
    }
    const rest = nodes.filter((n) => n !== leader && n.process !== "removed").map((n) => n.index);
    this.run("network", { action: "partition", groups: [[leader.index], rest] }, `split off ${leader.name}`);
  }

  partition() {
    const nodes = this.frame ? this.frame.nodes.filter((n) => n.process !== "removed") : [];
    const b = nodes.filter((n) => this.groupB.has(n.index)).map((n) => n.index);
    const a = nodes.filter((n) => !this.groupB.has(n.index)).map((n) => n.index);
    if (!a.length || !b.length) {
      this.local("network", "put at least one node in each group: click nodes (here or in the picture) to move them to B");
      return;
    }
    const names = (g) => g.map((i) => `n${i}`).join(",");
    this.run("network", { action: "partition", groups: [a, b] }, `partition ${names(a)} | ${names(b)}`);
  }

  linkFault() {
    const src = Number(this.$("#link-src").value);
    const dst = Number(this.$("#link-dst").value);
    const kind = this.$("#link-kind").value;
    const value = Number(this.$("#link-value").value);
    if (src === dst) {
      this.local("network", "choose two different nodes for a link");
      return;
    }
    const payload = { action: kind, src, dst };
    let what = `${kind} n${src}→n${dst}`;
    if (kind === "drop") {
      payload.p = value;
      what += ` (${Math.round(value * 100)}%)`;
    } else if (kind === "delay") {
      payload.seconds = value;
      what += ` (${value} s)`;
    }
    this.run("network", payload, what);
  }

  /** A mistake caught in the page: shown like a refused control, nothing sent. */
  local(area, message) {
    const out = this.$(`[data-result-for="${area}"]`);
    setAttrs(out, { "data-state": "error" });
    out.textContent = `✗ ${message}`;
  }

  toggleGroup(index) {
    if (this.groupB.has(index)) this.groupB.delete(index);
    else this.groupB.add(index);
    this.onGroupsChanged(this.groupB);
    if (this.frame) this.drawPicker(this.frame.nodes);
  }

  /** Refresh the table, the pickers and the leader's replication progress. */
  update(frame) {
    this.frame = frame;
    const names = frame.nodes.map((n) => n.name).join(",");
    if (names !== this.tableNames) {
      this.tableNames = names;
      this.buildTable(frame.nodes);
      this.fillSelects(frame.nodes);
    }
    for (const n of frame.nodes) this.drawRow(n);
    this.drawPicker(frame.nodes);
    this.drawProgress(frame.nodes);
  }

  buildTable(nodes) {
    const body = this.$("#node-table tbody");
    body.replaceChildren();
    for (const n of nodes) {
      const tr = this.doc.createElement("tr");
      tr.dataset.rowNode = n.name;
      tr.innerHTML = `<td class="nm"><span class="swatch"></span>${n.name}</td><td class="role"></td>
        <td class="term"></td><td class="vote"></td><td class="leader"></td><td class="idx"></td>
        <td class="acts">${NODE_ACTIONS.map(
          (a) => `<button data-action="${a}" data-node="${n.index}" title="${a} ${n.name}">${a}</button>`,
        ).join("")}</td>`;
      body.appendChild(tr);
    }
  }

  drawRow(n) {
    const tr = this.$(`tr[data-row-node="${n.name}"]`);
    if (!tr) return;
    // The same as the picture (which may be replaying a campaign), not a step ahead of it.
    const d = this.drawn(n.name);
    const role = d.role;
    tr.dataset.process = n.process;
    tr.querySelector(".swatch").style.background = roleColour(role ?? "unknown");
    setText(tr.querySelector(".role"), role ?? (n.process === "alive" ? "not answering" : n.process));
    setText(tr.querySelector(".term"), fmt(d.term));
    setText(tr.querySelector(".vote"), fmt(d.vote));
    setText(tr.querySelector(".leader"), fmt(d.leader));
    setText(tr.querySelector(".idx"), n.last_index == null ? "–"
      : `${n.last_index} / ${n.commit_index} / ${n.applied_index}`);
    // Only the actions that make sense now are enabled: the Cluster refuses the rest anyway.
    const allowed = {
      kill: n.process === "alive" || n.process === "paused",
      restart: n.process === "killed",
      pause: n.process === "alive",
      resume: n.process === "paused",
    };
    for (const b of tr.querySelectorAll("button[data-action]")) b.disabled = !allowed[b.dataset.action];
  }

  drawPicker(nodes) {
    const picker = this.$("#group-picker");
    if (picker.childElementCount !== nodes.length) {
      picker.replaceChildren();
      for (const n of nodes) {
        const chip = this.doc.createElement("button");
        chip.className = "chip";
        chip.dataset.pick = n.name;
        chip.addEventListener("click", () => this.toggleGroup(n.index));
        picker.appendChild(chip);
      }
    }
    nodes.forEach((n, i) => {
      const chip = picker.children[i];
      const group = this.groupB.has(n.index) ? "B" : "A";
      chip.dataset.group = group;
      setText(chip, `${n.name}:${group}`);
    });
  }

  fillSelects(nodes) {
    for (const [id, pick] of [["#link-src", 0], ["#link-dst", 1]]) {
      const sel = this.$(id);
      sel.replaceChildren();
      for (const n of nodes) {
        const o = this.doc.createElement("option");
        o.value = n.index;
        o.textContent = n.name;
        sel.appendChild(o);
      }
      sel.value = String(Math.min(pick, nodes.length - 1));
    }
  }

  drawProgress(nodes) {
    const found = currentLeader(nodes);
    const leader = found && found.progress && this.drawn(found.name).role === "leader" ? found : null;
    const box = this.$("#progress-box");
    box.hidden = !leader;
    if (!leader) return;
    setText(this.$("#progress-leader"), leader.name);
    const body = this.$("#progress-table tbody");
    const peers = Object.keys(leader.progress).sort();
    if (body.childElementCount !== peers.length) {
      body.replaceChildren();
      for (const p of peers) {
        const tr = this.doc.createElement("tr");
        tr.dataset.progressPeer = p;
        tr.innerHTML = `<td>${p}</td><td class="m"></td><td class="n"></td><td class="s"></td>
          <td><span class="lag"><span></span></span></td>`;
        body.appendChild(tr);
      }
    }
    const last = leader.last_index || 0;
    peers.forEach((p, i) => {
      const tr = body.children[i];
      const pr = leader.progress[p];
      tr.dataset.progressPeer = p;
      setText(tr.children[0], p);
      setText(tr.querySelector(".m"), pr.match);
      setText(tr.querySelector(".n"), pr.next);
      setText(tr.querySelector(".s"), pr.state);
      const f = last > 0 ? Math.max(0, Math.min(1, pr.match / last)) : 1;
      tr.querySelector(".lag span").style.width = `${(f * 100).toFixed(1)}%`;
    });
  }
}
