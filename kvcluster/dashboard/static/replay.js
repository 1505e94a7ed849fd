// An election between real processes takes a few milliseconds, and the feed polls
// the nodes every ~100 ms: drawn from status alone, a campaign would mostly be a
// jump from one leader to the next. The nodes' role events say what happened in
// between, so a frame that carries a campaign is replayed at the pace of the
// message dots: pre-votes go out, answers come back, votes go out, answers come
// back, the winner leads; each step one trip of TRIP_MS. Afterwards the view is
// the status again (the replay ends where the status already is).

export const TRIP_MS = 400;

// When, in trips from the campaign's start, each role change and message type shows.
const ROLE_AT = { "pre-candidate": 0, candidate: 2, follower: 3, leader: 4 };
const MESSAGE_AT = { pre_vote: 0, pre_vote_resp: 1, vote: 2, vote_resp: 3 };
const LEADER_AT = 4;

export class Replay {
  constructor() {
    this.base = 0; // when the campaign being replayed started on screen
    this.until = 0; // when its replay ends
    this.steps = new Map(); // node name -> [{at, role, term}]
  }

  active(now) {
    return now < this.until;
  }

  /** Schedule one frame's role changes; returns whether it holds a campaign.
   * `drawn(name)` gives a node's {role, term, leader, vote} as drawn before: every
   * node keeps it until its first step, so the others do not jump ahead to the
   * new term while the campaign is still being shown. */
  add(frame, now, drawn) {
    const changes = (frame.events || []).map(roleChange).filter(Boolean);
    const campaign = changes.some((c) => c.campaign);
    // A frame during a replay still moves every node on (a step behind at most);
    // a campaign spread over two frames continues the replay already running.
    if (!campaign && !this.active(now)) return false;
    if (!this.active(now)) {
      this.base = now;
      this.steps.clear();
    }
    const status = new Map(frame.nodes.map((n) => [n.name, n]));
    for (const n of frame.nodes) {
      if (!this.steps.has(n.name)) this.steps.set(n.name, [{ at: -Infinity, ...drawn(n.name) }]);
    }
    for (const c of changes) {
      const n = status.get(c.node);
      if (!n) continue;
      const leader = c.role === "leader" ? c.node : c.role === "follower" ? n.leader : null;
      const vote = c.role === "candidate" ? c.node : c.role === "pre-candidate" ? undefined : n.vote;
      this.push(c.node, c.role, c.term, leader, vote, now);
    }
    // A node without a change of role still learns the new term, when the vote
    // request reaches it: show that step too.
    for (const n of frame.nodes) {
      const steps = this.steps.get(n.name);
      const last = steps[steps.length - 1];
      if (n.process !== "alive" || !n.answering || !n.role) continue;
      if (last.term !== n.term || last.role !== n.role || last.leader !== n.leader) {
        this.push(n.name, n.role, n.term, n.leader, n.vote, now);
      }
    }
    return campaign;
  }

  push(name, role, term, leader, vote, now) {
    const steps = this.steps.get(name);
    const previous = steps[steps.length - 1];
    if (vote === undefined) vote = previous.vote;
    if (previous.role === role && previous.term === term && previous.leader === leader) return;
    // Steps of one node stay in order, at least one trip apart.
    const at = Math.max(this.base + (ROLE_AT[role] ?? 0) * TRIP_MS, previous.at + TRIP_MS, now);
    steps.push({ at, role, term, leader, vote });
    this.until = Math.max(this.until, at + TRIP_MS);
  }

  /** The role and term to draw for a node now, or null to draw its status. */
  stateOf(name, now) {
    if (!this.active(now)) return null;
    const steps = this.steps.get(name);
    if (!steps) return null;
    let current = null;
    for (const s of steps) if (s.at <= now) current = s;
    return current;
  }

  /** When a message of this type, sent in a frame that arrived at `now`, departs:
   * campaign messages at their step; others not before the winner leads. */
  departure(type, now) {
    if (!this.active(now)) return now;
    if (type in MESSAGE_AT) return Math.max(now, this.base + MESSAGE_AT[type] * TRIP_MS);
    return Math.max(now, this.base + LEADER_AT * TRIP_MS);
  }
}

/** A node's role change from one of its events: "campaign" (it became a pre-candidate
 * or a candidate; a candidate's term is the one it runs for) or "role". */
function roleChange(e) {
  if (!e.node || !e.role) return null;
  if (e.event === "campaign") {
    const term = e.role === "candidate" ? (e.for_term ?? e.term) : e.term;
    return { node: e.node, role: e.role, term, campaign: true };
  }
  if (e.event === "role") return { node: e.node, role: e.role, term: e.term, campaign: false };
  return null;
}
