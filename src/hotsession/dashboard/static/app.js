// hotsession dashboard: plain ES modules, no build step; marked and DOMPurify are vendored
// (static/vendor/, used by markdown.js), nothing is loaded from another host.
//
// Data flow. The token lives in sessionStorage (this tab only, never in a URL). Every call sends
// `Authorization: Bearer <token>`; EventSource cannot send that header, so SSE is read with
// fetch() and a small parser (readSSE). Two streams at most, never polling:
// - `GET /v1/stream` (the tenant's stream): every session's list view when it opens, changes state
//   or closes (starting with a snapshot of all of them), a `turn` event per result / error /
//   permission request or answer, and a `pool` event every POOL_INTERVAL seconds (the pool page,
//   a point of the memory chart, and each session's memory);
// - the open session's `/events` (replay after a sequence number, then live): its conversation.
// The open session's details (memory with PSS, the prompts of turns sent elsewhere) are fetched
// again when one of its turns ends or a permission is asked or answered (coalesced).

import { renderMarkdown } from "./markdown.js";
import { formatDuration, timingStory } from "./timing.js";

const TOKEN_KEY = "hotsession.token";
const SAMPLES_KEY = "hotsession.memory";
const POOL_INTERVAL = 2;
const MAX_SAMPLES = 240;
const BUSY_STATES = new Set(["running", "waiting_permission"]);
const STATE_LABEL = {
  starting: "starting",
  idle: "idle · hot",
  running: "working",
  waiting_permission: "needs permission",
  evicted: "evicted",
  failed: "failed",
  closed: "closed",
};
const REFRESHING = new Set(["queued", "permission_request", "permission_resolved", "result", "error"]);

const $ = (id) => document.getElementById(id);

/** Tiny element builder: h("div", {class: "x", onclick}, "text", child). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c != null && c !== false) el.append(c);
  return el;
}

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  sessions: new Map(), // id -> snapshot (GET /v1/sessions[/id])
  selected: null,
  convs: new Map(), // id -> conversation (see conv())
  follow: null, // {id, ctl}: the open session's /events stream
  feed: null, // AbortController of /v1/stream
  pool: null,
  samples: loadSamples(),
  view: "sessions",
};

// ---------------------------------------------------------------- HTTP

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field; // the body field the error is about (`cwd`, ...), when it names one
  }
}

function headers(extra) {
  return { Authorization: `Bearer ${state.token}`, ...extra };
}

async function failure(res) {
  let err = {};
  try {
    err = (await res.json()).error || {};
  } catch {
    /* not JSON */
  }
  if (res.status === 401) signOut("The daemon refused the token.");
  return new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText, err.field);
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  if (!res.ok) throw await failure(res);
  return res.status === 204 ? null : res.json();
}

/** Parse a text/event-stream body; calls onEvent({id, event, data}) per event. */
async function readSSE(res, onEvent) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let ev = { id: null, event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let m;
    while ((m = /\r\n|\n|\r(?=[^\n])/.exec(buf))) {
      const line = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      if (line === "") {
        if (ev.data.length) onEvent({ id: ev.id, event: ev.event, data: ev.data.join("\n") });
        ev = { id: null, event: "message", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let val = i < 0 ? "" : line.slice(i + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (field === "data") ev.data.push(val);
      else if (field === "event") ev.event = val;
      else if (field === "id") ev.id = val;
    }
  }
}

async function stream(method, path, body, signal, onEvent) {
  const init = {
    method,
    signal,
    headers: headers({ Accept: "text/event-stream", ...(body ? { "Content-Type": "application/json" } : {}) }),
  };
  if (body) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  if (!res.ok) throw await failure(res);
  await readSSE(res, onEvent);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function toast(text, kind = "err") {
  const el = h("div", { class: `toast ${kind}` }, text);
  $("toasts").append(el);
  setTimeout(() => el.remove(), 6000);
}

// ---------------------------------------------------------------- formatting

const fmtS = formatDuration;
const fmtMB = (mb) => (mb == null ? "–" : mb >= 1024 ? `${(mb / 1024).toFixed(1)} GB` : `${Math.round(mb)} MB`);
/** Long paths keep their end, the part that tells them apart. */
const tailPath = (p, n = 44) => (p && p.length > n ? `…${p.slice(p.length - n + 1)}` : p || "");
const shortId = (id) => (id && id.length > 12 ? `${id.slice(0, 11)}…` : id);

/** A session's own (anonymous) memory: what the list shows (shared pages are not its own). */
function memOf(s) {
  const m = s && s.memory;
  if (!m) return null;
  return m.anon_mb ?? m.pss_mb ?? m.rss_mb ?? null;
}

/** The timing panel: the story `hotsession ask` prints (timing.js), with its bar. */
function timingBar(t, compact = false) {
  if (!t) return h("span", { class: "muted" }, "–");
  const story = timingStory(t);
  const total = story.total_ms || 1;
  const shown = story.segments.reduce((a, s) => a + s.ms, 0);
  const extra = !compact && t.tool_calls ? ` · ${t.tool_calls} tool call${t.tool_calls > 1 ? "s" : ""}` : "";
  return h(
    "div",
    { class: `timing${compact ? " compact" : ""}` },
    h("span", { class: "timing-line" }, clockIcon(), h("span", { class: "timing-text" }, story.text),
      extra ? h("span", { class: "timing-extra" }, extra) : null),
    h(
      "span",
      { class: "bar", "aria-hidden": "true" },
      story.segments.map((s) =>
        h("span", { class: s.key, "data-k": s.key, style: `flex-grow:${s.ms / total}`, title: `${s.label} ${fmtS(s.ms)} (${s.percent})` })),
      // What the segments leave out (small gaps between them) keeps the shares true to total_ms.
      shown < total ? h("span", { class: "rest", style: `flex-grow:${(total - shown) / total}` }) : null,
    ),
  );
}

/** A stopwatch drawn in SVG: the "⏱" glyph is missing from many fonts. */
function clockIcon() {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("class", "clock");
  svg.setAttribute("aria-hidden", "true");
  for (const d of ["M8 3.5a5.5 5.5 0 1 0 0 11a5.5 5.5 0 1 0 0-11z", "M6.5 1h3M8 1v2.5M8 9V6M12.5 4.5l1-1"]) {
    const path = document.createElementNS(NS, "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}

function stateChip(s) {
  const st = s ? s.state : "";
  return h("span", { class: `state s-${st}` }, STATE_LABEL[st] || st);
}

// ---------------------------------------------------------------- session list

let detailTimer = null;

/** Coalesce: a burst of events of the open session causes one fetch of its details. */
function scheduleDetail() {
  if (detailTimer || !state.selected) return;
  detailTimer = setTimeout(() => {
    detailTimer = null;
    if (state.selected) refreshOne(state.selected);
  }, 150);
}

/** The open session with its details (memory with PSS, recent turns' prompts). */
async function refreshOne(id) {
  let s;
  try {
    s = await api("GET", `v1/sessions/${encodeURIComponent(id)}`);
  } catch (e) {
    if (e.status === 404) state.sessions.delete(id);
    return;
  }
  const old = state.sessions.get(id);
  if (s.state === "closed" && !old) return; // closed meanwhile and already gone from the list
  state.sessions.set(id, { ...s, detail_memory: s.memory, memory: (old && old.memory) || s.memory });
  const c = state.convs.get(id);
  if (c && c.full) fillPrompts(c);
  renderSessions();
  if (state.selected === id) (renderDetailHead(), syncStreams());
}

/** A `session` event of the tenant's stream: the session's list view. */
function onSessionView(v, snapshot) {
  if (snapshot) snapshot.add(v.id);
  const old = state.sessions.get(v.id);
  if (v.state === "closed") {
    state.sessions.delete(v.id);
    if (state.selected === v.id) renderDetailHead({ ...old, ...v });
  } else {
    state.sessions.set(v.id, {
      ...v,
      recent_turns: old && old.recent_turns,
      detail_memory: old && old.detail_memory,
    });
  }
  renderSessions();
  if (state.selected === v.id && v.state !== "closed") {
    renderDetailHead();
    syncStreams(); // the page may have opened on this session before the list arrived
  }
}

/** A `pool` event: the pool page, a point of the memory chart, every session's memory. */
function onPool(p, snapshot) {
  if (snapshot) {
    // The first pool event ends the snapshot: sessions it did not name are gone.
    for (const id of [...state.sessions.keys()]) if (!snapshot.has(id)) state.sessions.delete(id);
    renderSessions();
  }
  state.pool = p;
  const sample = p.sample || {};
  if (sample.used_mb != null) {
    state.samples.push({ t: sample.t ? sample.t * 1000 : Date.now(), used: sample.used_mb, budget: sample.budget_mb });
    if (state.samples.length > MAX_SAMPLES) state.samples.splice(0, state.samples.length - MAX_SAMPLES);
    sessionStorage.setItem(SAMPLES_KEY, JSON.stringify(state.samples));
  }
  const per = sample.sessions || {};
  for (const [id, s] of state.sessions) {
    s.memory = per[id] || (s.pid ? s.memory : null);
    const mem = rows.get(id) && rows.get(id).querySelector(".mem");
    if (mem) mem.textContent = fmtMB(memOf(s));
  }
  renderPool();
}

/** Follow the tenant's stream, reconnecting (each connection starts with a fresh snapshot). */
function openFeed() {
  if (state.feed) return;
  const ctl = new AbortController();
  state.feed = ctl;
  (async () => {
    let backoff = 250;
    while (!ctl.signal.aborted && state.token) {
      let snapshot = new Set();
      try {
        await stream("GET", `v1/stream?pool_interval=${POOL_INTERVAL}`, null, ctl.signal, (ev) => {
          let data;
          try {
            data = JSON.parse(ev.data);
          } catch {
            return;
          }
          backoff = 250;
          if (ev.event === "session") onSessionView(data, snapshot);
          else if (ev.event === "pool") {
            onPool(data, snapshot);
            snapshot = null;
          } else if (ev.event === "turn" && data.session_id === state.selected) scheduleDetail();
        });
      } catch (e) {
        if (ctl.signal.aborted) return;
        if (e.status === 401) break;
      }
      await sleep(backoff); // the daemon restarted or the network dropped: start over
      backoff = Math.min(backoff * 2, 8000);
    }
    if (state.feed === ctl) state.feed = null;
  })();
}

const rows = new Map(); // id -> <li>

function renderSessions() {
  const ul = $("sessions");
  const list = [...state.sessions.values()].sort(
    (a, b) => (b.last_active_at || b.created_at || 0) - (a.last_active_at || a.created_at || 0),
  );
  $("count").textContent = list.length ? String(list.length) : "";
  $("no-sessions").hidden = list.length > 0;
  for (const [id, li] of rows) if (!state.sessions.has(id)) (li.remove(), rows.delete(id));
  list.forEach((s, i) => {
    let li = rows.get(s.id);
    if (!li) {
      li = h("li", { "data-id": s.id });
      rows.set(s.id, li);
    }
    const sel = state.selected === s.id;
    const link = h(
      "a",
      { href: `#/sessions/${encodeURIComponent(s.id)}`, class: "row", "aria-current": sel ? "true" : null },
      h("span", { class: "row-top" }, stateChip(s), h("span", { class: "sid" }, shortId(s.id)), h("span", { class: "spacer" }),
        h("span", { class: "muted" }, s.model || "default model")),
      h("span", { class: "cwd", title: s.cwd || "" }, tailPath(s.cwd)),
      h("span", { class: "row-meta" },
        h("span", null, `${s.turns || 0} turn${s.turns === 1 ? "" : "s"}`),
        h("span", { class: "mem" }, fmtMB(memOf(s))),
        s.pending_permissions && s.pending_permissions.length ? h("span", { class: "badge" }, `${s.pending_permissions.length} waiting`) : null),
      timingBar(s.last_timing, true),
    );
    li.replaceChildren(link);
    li.className = sel ? "selected" : "";
    if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null);
  });
}

/** Follow the open session's events (and only its). */
function syncStreams() {
  const id = state.selected && state.sessions.has(state.selected) ? state.selected : null;
  if (state.follow && state.follow.id !== id) {
    state.follow.ctl.abort();
    state.follow = null;
  }
  if (id && !state.follow) follow(id);
}

function follow(id) {
  const ctl = new AbortController();
  state.follow = { id, ctl };
  (async () => {
    let backoff = 250;
    while (!ctl.signal.aborted && state.token) {
      const c = conv(id);
      try {
        await stream("GET", `v1/sessions/${encodeURIComponent(id)}/events?after=${c.lastSeq}`, null, ctl.signal, (ev) => ingest(id, ev));
        backoff = 250;
      } catch (e) {
        if (ctl.signal.aborted) return;
        if (e.status === 404 || e.status === 401) break;
      }
      const s = state.sessions.get(id);
      if (!s || s.state === "closed") break;
      await sleep(backoff); // reconnect (with Last-Event-ID semantics via ?after=)
      backoff = Math.min(backoff * 2, 8000);
    }
    if (state.follow && state.follow.ctl === ctl) state.follow = null;
  })();
}

// ---------------------------------------------------------------- conversation

/** Per-session conversation: its DOM, the last sequence number seen, open cards. */
function conv(id, full = state.selected === id) {
  let c = state.convs.get(id);
  if (!c) {
    const s = state.sessions.get(id);
    c = {
      id,
      // A session followed in the background starts at its last event; the open one replays all.
      full,
      lastSeq: full ? 0 : (s && s.last_seq) || 0,
      el: h("div", { class: "turns" }),
      turnEl: null,
      turnNo: 0,
      pending: [], // prompts sent from this tab, waiting for their turn to start
      tools: new Map(), // tool_use_id -> card
      perms: new Map(), // request_id -> card
      streamed: [], // text blocks shown from stream_event deltas, not yet completed by a message
      live: null, // the one of them deltas are arriving for
      stick: true, // follow the tail (see scrollLog)
    };
    state.convs.set(id, c);
  }
  return c;
}

function ingest(id, ev) {
  if (ev.event === "session") return;
  const c = conv(id);
  const seq = Number(ev.id);
  if (ev.id != null && Number.isFinite(seq)) {
    if (seq <= c.lastSeq) return; // already seen (two streams may carry the same event)
    c.lastSeq = seq;
  }
  let data;
  try {
    data = JSON.parse(ev.data);
  } catch {
    return;
  }
  // Accept both a bare payload and an envelope {seq, turn, type, data}.
  if (data && data.type === ev.event && data.data && typeof data.data === "object") data = data.data;
  if (c.full) render(c, ev.event, data);
  // The tenant's stream brings the states; the prompts of turns sent elsewhere and the memory
  // come with the session's details.
  if (REFRESHING.has(ev.event) && state.selected === id) scheduleDetail();
}

function openTurn(c, number) {
  if (c.turnEl) {
    if (number && number !== c.turnNo) numberTurn(c, c.turnEl, number);
    return c.turnEl;
  }
  const prompt = c.pending.shift();
  c.turnEl = h("article", { class: "turn" }, h("div", { class: "turn-no" }),
    prompt != null ? h("div", { class: "msg user" }, prompt) : null);
  numberTurn(c, c.turnEl, number || c.turnNo + 1);
  c.el.append(c.turnEl);
  return c.turnEl;
}

/** Label a turn; events other than result/error/permission_request carry no turn number. */
function numberTurn(c, el, n) {
  c.turnNo = n;
  el.dataset.turn = String(n);
  el.querySelector(".turn-no").textContent = `Turn ${n}`;
  fillPrompts(c);
}

/** Prompts the daemon keeps (recent_turns of GET /v1/sessions/{id}) for turns sent elsewhere. */
function fillPrompts(c) {
  const s = state.sessions.get(c.id);
  if (!s || !Array.isArray(s.recent_turns)) return;
  for (const t of s.recent_turns) {
    const el = c.el.querySelector(`.turn[data-turn="${t.turn}"]`);
    if (el && t.prompt && !el.querySelector(".msg.user")) {
      const text = t.prompt.length >= 200 ? `${t.prompt}…` : t.prompt;
      el.querySelector(".turn-no").after(h("div", { class: "msg user" }, text));
    }
  }
}

// Following the tail. The open conversation stays scrolled to its newest line (`c.stick`) while
// it grows (replay, streamed text, tool output, a window resize) unless the user scrolled up;
// scrolling back to the bottom, or sending a prompt, follows again.
const STICK_PX = 48;
let lastTop = 0;

function atBottom(log) {
  return log.scrollHeight - log.scrollTop - log.clientHeight < STICK_PX;
}

function onLogScroll() {
  const c = state.selected && state.convs.get(state.selected);
  const log = $("log");
  if (!c) return;
  // Growth never lowers scrollTop; only the user does (so a late scroll event of our own
  // scrolling, after more text arrived, does not count as "scrolled up").
  if (atBottom(log)) c.stick = true;
  else if (log.scrollTop < lastTop - 1) c.stick = false;
  lastTop = log.scrollTop;
}

function scrollLog(c) {
  if (state.selected !== c.id || !c.stick) return;
  const log = $("log");
  log.scrollTop = log.scrollHeight;
  lastTop = log.scrollTop;
}

const tailObserver = new ResizeObserver(() => {
  const c = state.selected && state.convs.get(state.selected);
  if (c) scrollLog(c);
});

/** The model's text, rendered as Markdown (markdown.js: never raw HTML of the model's). */
function assistantText(text) {
  const el = h("div", { class: "msg assistant md" });
  el.append(renderMarkdown(text));
  return el;
}

// Streamed text (sessions with include_partial_messages): each text block the model writes
// arrives as `stream_event` deltas, then once more whole in an `assistant` message. A block
// opens at its first delta and is re-rendered at most once a frame while deltas come; the
// whole message then replaces the streamed blocks' text (the same text, now final) instead of
// being added again.
function onStreamEvent(c, turnEl, m) {
  const ev = m.event || {};
  if (ev.type === "content_block_start" && ev.content_block && ev.content_block.type === "text") {
    openStreamed(c, turnEl, ev.index);
  } else if (ev.type === "content_block_delta" && ev.delta && ev.delta.type === "text_delta") {
    const b = c.live && c.live.index === ev.index ? c.live : openStreamed(c, turnEl, ev.index);
    b.text += ev.delta.text || "";
    if (!b.frame) b.frame = requestAnimationFrame(() => paintStreamed(c, b));
  } else if (ev.type === "content_block_stop" && c.live && c.live.index === ev.index) {
    paintStreamed(c, c.live);
    c.live = null;
  }
}

function openStreamed(c, turnEl, index) {
  if (c.live) paintStreamed(c, c.live);
  const b = { index, text: "", frame: 0, el: h("div", { class: "msg assistant md streaming" }) };
  turnEl.append(b.el);
  c.live = b;
  c.streamed.push(b);
  return b;
}

function paintStreamed(c, b) {
  if (b.frame) cancelAnimationFrame(b.frame);
  b.frame = 0;
  b.el.replaceChildren(renderMarkdown(b.text));
  scrollLog(c);
}

/** An `assistant` message's text block: the streamed block it completes, or a new one. */
function placeText(c, turnEl, text) {
  const b = c.streamed.shift();
  if (!b) return turnEl.append(assistantText(text));
  if (c.live === b) c.live = null;
  b.text = text;
  paintStreamed(c, b);
  b.el.classList.remove("streaming");
}

function toolResultText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((b) => (b.type === "text" ? b.text : `[${b.type}]`)).join("\n");
  return JSON.stringify(content);
}

function render(c, type, d) {
  const turnEl = openTurn(c, d && d.turn);
  if (type === "message" && d && d.type === "stream_event") {
    onStreamEvent(c, turnEl, d); // hundreds a turn: painted (and scrolled) once a frame at most
    return;
  }
  if (type === "message") renderMessage(c, turnEl, d);
  else if (type === "queued") turnEl.append(h("div", { class: "note" }, `queued (position ${d.position})`));
  else if (type === "permission_request") renderPermission(c, turnEl, d);
  else if (type === "permission_resolved") resolvePermission(c, d);
  else if (type === "result") {
    if (d.is_error) turnEl.append(h("div", { class: "msg error" }, d.result || d.subtype || "error"));
    turnEl.append(timingBar(d.timing));
    endTurn(c);
  } else if (type === "error") {
    turnEl.append(h("div", { class: "msg error", "data-code": d.code }, h("b", null, d.code || "error"), ` · ${d.message || ""}`));
    endTurn(c);
  }
  scrollLog(c);
}

/** The turn is over: streamed text that no whole message completed (interrupted) stays. */
function endTurn(c) {
  if (c.live) paintStreamed(c, c.live);
  for (const b of c.streamed) b.el.classList.remove("streaming");
  c.live = null;
  c.streamed = [];
  c.turnEl = null;
}

function renderMessage(c, turnEl, m) {
  if (m.type === "system" && m.subtype === "init") {
    // The CLI says init at every turn: note it once, and again when the model changes.
    if (c.model !== m.model) {
      const tools = Array.isArray(m.tools) ? ` · ${m.tools.length} tools` : "";
      turnEl.append(h("div", { class: "note" }, `${m.model || "model"}${tools}`));
      c.model = m.model;
    }
    return;
  }
  const content = m.message && m.message.content;
  if (m.type === "assistant" && Array.isArray(content)) {
    for (const b of content) {
      if (b.type === "text" && b.text) placeText(c, turnEl, b.text);
      else if (b.type === "thinking" && b.thinking) {
        turnEl.append(h("details", { class: "thinking" }, h("summary", null, "Thinking"), h("div", null, b.thinking)));
      } else if (b.type === "tool_use") {
        const card = h("details", { class: "tool", open: true },
          h("summary", null, h("b", null, b.name), " ", h("span", { class: "muted" }, summarize(b.input))),
          h("pre", { class: "input" }, JSON.stringify(b.input, null, 2)),
          h("div", { class: "result pending muted" }, "running…"));
        c.tools.set(b.id, card);
        turnEl.append(card);
      }
    }
  } else if (m.type === "user") {
    if (typeof content === "string") {
      turnEl.append(h("div", { class: "msg user" }, content));
      return;
    }
    if (!Array.isArray(content)) return;
    for (const b of content) {
      if (b.type !== "tool_result") continue;
      const card = c.tools.get(b.tool_use_id);
      const text = toolResultText(b.content);
      const out = h("pre", { class: `result${b.is_error ? " bad" : ""}` }, text || "(no output)");
      if (card) card.querySelector(".result").replaceWith(out);
      else turnEl.append(out);
    }
  }
}

function summarize(input) {
  if (!input || typeof input !== "object") return "";
  const v = input.command ?? input.file_path ?? input.path ?? input.pattern ?? input.url ?? input.description ?? "";
  const s = String(v);
  return s.length > 80 ? `${s.slice(0, 79)}…` : s;
}

function renderPermission(c, turnEl, d) {
  const editor = h("textarea", { class: "edit", rows: "4", spellcheck: "false", "aria-label": "Tool input (JSON)", hidden: true },
    JSON.stringify(d.input, null, 2));
  const pre = h("pre", { class: "input" }, JSON.stringify(d.input, null, 2));
  const err = h("p", { class: "err", role: "alert" });
  const answer = async (behavior) => {
    const body = { behavior };
    if (behavior === "allow" && !editor.hidden) {
      try {
        body.updated_input = JSON.parse(editor.value);
      } catch {
        err.textContent = "The edited input is not valid JSON.";
        editor.focus();
        return;
      }
    }
    if (behavior === "deny") body.message = "Denied from the hotsession dashboard.";
    for (const b of card.querySelectorAll("button")) b.disabled = true;
    try {
      await api("POST", `v1/sessions/${encodeURIComponent(c.id)}/permissions/${encodeURIComponent(d.request_id)}`, body);
    } catch (e) {
      err.textContent = e.message;
      for (const b of card.querySelectorAll("button")) b.disabled = false;
    }
  };
  const card = h("div", { class: "perm", "data-request": d.request_id, role: "group", "aria-label": `Permission request: ${d.tool_name}` },
    h("div", { class: "perm-head" }, h("b", null, "Permission: "), h("code", null, d.tool_name), d.title ? ` · ${d.title}` : "",
      d.decision_reason ? h("span", { class: "muted" }, ` · ${d.decision_reason}`) : null),
    d.description ? h("p", { class: "muted" }, d.description) : null,
    pre, editor, err,
    h("div", { class: "perm-actions" },
      h("button", { type: "button", class: "ok", onclick: () => answer("allow") }, "Approve"),
      h("button", { type: "button", class: "danger", onclick: () => answer("deny") }, "Deny"),
      h("button", { type: "button", class: "ghost", onclick: (e) => {
        editor.hidden = !editor.hidden;
        pre.hidden = nested || !editor.hidden;
        e.target.textContent = editor.hidden ? "Edit input" : "Use original";
        if (!editor.hidden) editor.focus();
      } }, "Edit input")));
  c.perms.set(d.request_id, card);
  // Inside its tool call's card when there is one (which already shows the input).
  const tool = d.tool_use_id ? c.tools.get(d.tool_use_id) : null;
  const nested = !!tool;
  if (tool) {
    pre.hidden = true;
    tool.open = true;
    const pending = tool.querySelector(".result.pending");
    if (pending) pending.before(card);
    else tool.append(card);
  } else turnEl.append(card);
  if (state.selected === c.id && !card.classList.contains("resolved")) {
    card.scrollIntoView({ block: "nearest" });
    card.querySelector("button.ok").focus({ preventScroll: true });
  }
}

function resolvePermission(c, d) {
  const card = c.perms.get(d.request_id);
  if (!card) return;
  const out = { allow: "approved", deny: "denied", cancelled: "withdrawn" }[d.outcome] || d.outcome;
  const by = d.by && d.by !== "client" ? ` (${d.by})` : "";
  card.querySelector(".perm-actions").replaceChildren(h("span", { class: `outcome o-${d.outcome}` }, `${out}${by}`));
  card.querySelector(".edit").hidden = true;
  card.classList.add("resolved");
}

// ---------------------------------------------------------------- detail pane

function select(id) {
  if (state.selected === id) return;
  const prev = state.selected && state.convs.get(state.selected);
  if (prev) prev.draft = $("prompt").value; // each session keeps its unsent prompt
  state.selected = id;
  if (id) {
    let c = state.convs.get(id);
    if (c && !c.full) {
      // Started from its last event (not open then): replay its whole history now.
      if (state.follow && state.follow.id === id) (state.follow.ctl.abort(), (state.follow = null));
      state.convs.delete(id);
      c = null;
    }
    c = conv(id, true);
    $("log").replaceChildren(c.el);
    tailObserver.disconnect();
    tailObserver.observe(c.el);
    tailObserver.observe($("log"));
    c.stick = true; // opening a session shows its newest turn
    scrollLog(c);
    $("prompt").value = c.draft || "";
  }
  $("detail").hidden = !id;
  $("no-detail").hidden = !!id;
  document.body.classList.toggle("has-detail", !!id);
  renderSessions();
  if (id) {
    renderDetailHead();
    refreshOne(id);
  }
  syncStreams();
}

function renderDetailHead(s = state.sessions.get(state.selected)) {
  if (!s) return;
  $("d-state").replaceWith(Object.assign(stateChip(s), { id: "d-state" }));
  $("d-id").textContent = s.id;
  const m = s.detail_memory || s.memory;
  const facts = [
    ["cwd", s.cwd],
    ["model", s.model || "default"],
    ["permissions", s.permission_mode || "default"],
    ["turns", String(s.turns || 0)],
    ["pid", s.pid ? String(s.pid) : "none", "wide"],
    ["memory", m ? `${m.pss_mb != null ? `${fmtMB(m.pss_mb)} pss · ` : ""}${fmtMB(m.rss_mb)} rss · ${fmtMB(m.anon_mb)} anon` : "–"],
    ["CLI session", s.cli_session_id, "wide"],
  ];
  $("d-facts").replaceChildren(
    ...facts.map(([k, v, cls]) => h("div", { class: cls }, h("dt", null, k), h("dd", { title: v || "" }, v || "–"))),
  );
  const busy = BUSY_STATES.has(s.state);
  $("interrupt").disabled = !busy;
  $("d-close").disabled = s.state === "closed";
  $("send").disabled = s.state === "closed" || s.state === "failed";
}

async function sendPrompt() {
  const id = state.selected;
  const text = $("prompt").value;
  if (!id || !text.trim()) return;
  $("prompt").value = "";
  const c = conv(id);
  const s = state.sessions.get(id);
  if (c.turnEl || (s && BUSY_STATES.has(s.state))) c.pending.push(text);
  else {
    c.pending.push(text);
    openTurn(c);
  }
  c.stick = true; // the answer to what was just sent stays in view
  scrollLog(c);
  if (s && !BUSY_STATES.has(s.state)) {
    s.state = "running";
    renderDetailHead();
    renderSessions();
  }
  try {
    await stream("POST", `v1/sessions/${encodeURIComponent(id)}/turns`, { prompt: text }, undefined, (ev) => ingest(id, ev));
  } catch (e) {
    const el = c.turnEl || openTurn(c);
    el.append(h("div", { class: "msg error" }, h("b", null, e.code || "error"), ` · ${e.message}`));
    endTurn(c);
    scheduleDetail();
  }
}

// ---------------------------------------------------------------- forms

function fillOpts(form) {
  form.querySelector(".opts").replaceChildren($("opts-tpl").content.cloneNode(true));
  form.elements.cwd.addEventListener("input", (e) => e.target.removeAttribute("aria-invalid"));
  form.querySelector(".dialog-actions .ghost").addEventListener("click", () => form.closest("dialog").close());
}

/** The working directories of this tenant's sessions, newest first: what the cwd field offers
 * (no endpoint tells the dashboard the tenant's roots). */
function knownCwds() {
  const list = [...state.sessions.values()].filter((s) => s.cwd);
  list.sort((a, b) => (b.last_active_at || b.created_at || 0) - (a.last_active_at || a.created_at || 0));
  return [...new Set(list.map((s) => s.cwd))];
}

/** A refused working directory: say what to fill in, offer the last session's, focus the field.
 * An empty one is refused when the tenant's first root is `/` (the API wants `/` said). */
function explainCwd(form, ex) {
  if (ex.field !== "cwd") return false;
  const input = form.elements.cwd;
  let text = ex.message;
  if (!input.value.trim()) {
    text = "Fill in the working directory: this daemon has no default one for you. Give an absolute path (your project's directory; / for the whole filesystem).";
    const last = knownCwds()[0];
    if (last) {
      input.value = last;
      text += ` Filled in with your last session's: ${last}`;
    }
  }
  input.setAttribute("aria-invalid", "true");
  form.querySelector(".err").textContent = text;
  input.focus();
  input.select();
  return true;
}

function optsOf(form) {
  const out = {};
  for (const name of ["cwd", "model", "permission_mode"]) {
    const v = form.elements[name].value.trim();
    if (v) out[name] = v;
  }
  // Token deltas as `stream_event` messages, rendered live (see onStreamEvent).
  if (form.elements.include_partial_messages.checked) out.include_partial_messages = true;
  return out;
}

async function createSession(e) {
  e.preventDefault();
  const form = e.target;
  const err = form.querySelector(".err");
  err.textContent = "";
  form.querySelector("button[type=submit]").disabled = true;
  try {
    const s = await api("POST", "v1/sessions", optsOf(form));
    state.sessions.set(s.id, s);
    form.closest("dialog").close();
    location.hash = `#/sessions/${encodeURIComponent(s.id)}`;
    route(); // now, not at the hashchange event: the prompt box is this session's at once
    $("prompt").focus();
  } catch (ex) {
    if (!explainCwd(form, ex)) err.textContent = ex.message;
  } finally {
    form.querySelector("button[type=submit]").disabled = false;
  }
}

async function quickTurn(e) {
  e.preventDefault();
  const form = e.target;
  const err = form.querySelector(".err");
  const prompt = form.elements.prompt.value;
  if (!prompt.trim()) return;
  err.textContent = "";
  const btn = form.querySelector("button[type=submit]");
  btn.disabled = true;
  let id = null;
  try {
    await stream("POST", "v1/ask", { prompt, ...optsOf(form) }, undefined, (ev) => {
      if (ev.event === "session") {
        const info = JSON.parse(ev.data);
        id = info.id;
        if (!state.sessions.has(id)) state.sessions.set(id, { id, state: "running", cli_session_id: info.cli_session_id, turns: 0 });
        state.convs.delete(id);
        conv(id, true).pending.push(prompt); // the open session replays from its first event

        form.elements.prompt.value = "";
        form.closest("dialog").close();
        location.hash = `#/sessions/${encodeURIComponent(id)}`;
        route();
        return;
      }
      if (id) ingest(id, ev);
    });
  } catch (ex) {
    if (id) toast(ex.message);
    else if (!explainCwd(form, ex)) err.textContent = ex.message;
  } finally {
    btn.disabled = false;
  }
}

// ---------------------------------------------------------------- pool

function loadSamples() {
  try {
    return JSON.parse(sessionStorage.getItem(SAMPLES_KEY)) || [];
  } catch {
    return [];
  }
}

function renderPool() {
  const p = state.pool;
  if (!p) return;
  const on = p.enabled !== false && Array.isArray(p.profiles);
  $("pool-off").hidden = on;
  for (const el of document.querySelectorAll(".pool-only")) el.hidden = !on || !p.memory;
  $("p-spawned").textContent = String(p.spawned_total ?? "–");
  const reasons = (el, obj) => {
    const entries = Object.entries(obj || {}).sort((a, b) => b[1] - a[1]);
    $(el).replaceChildren(...(entries.length ? entries.flatMap(([k, v]) => [h("dt", null, k), h("dd", null, String(v))]) : [h("dd", { class: "muted" }, "none")]));
  };
  reasons("evictions", p.evictions);
  reasons("recycles", p.recycles);
  renderNodes(p.nodes);
  if (!on) {
    $("poolsum").textContent = "";
    return;
  }
  const ready = p.profiles.reduce((a, x) => a + (x.ready || 0), 0);
  const spawning = p.profiles.reduce((a, x) => a + (x.spawning || 0), 0);
  const m = p.memory || {};
  $("poolsum").textContent = `${ready} ready${spawning ? ` · ${spawning} spawning` : ""} · ${fmtMB(m.used_mb)} / ${fmtMB(m.budget_mb)}`;
  $("p-used").textContent = `${fmtMB(m.used_mb)} / ${fmtMB(m.budget_mb)}`;
  $("p-spares").textContent = fmtMB(m.spares_mb);
  $("p-sessions").textContent = fmtMB(m.sessions_mb);
  $("profiles").replaceChildren(
    ...p.profiles.map((x) =>
      h("tr", { class: x.failing ? "failing" : null, "data-profile": x.profile },
        h("th", { scope: "row" }, h("span", { class: "cwd", title: x.profile }, tailPath(x.cwd || x.profile, 60)),
          h("span", { class: "muted small" }, [x.tenant, x.model || "default model", `${x.permission_mode || "no"} permission mode`].filter(Boolean).join(" · ")),
          // Drop-in clients' profiles differ by their flags: whose, a short key, and which flags.
          x.client || (x.flags && x.flags.length) ? h("span", { class: "muted small", "data-k": "client", title: `profile ${x.profile}` }, [x.client, `profile ${String(x.profile).slice(0, 8)}`].filter(Boolean).join(" · ")) : null,
          (x.flags || []).map((f) => h("span", { class: "muted small", "data-k": "flag" }, f)),
          x.failing ? h("span", { class: "badge" }, "failing") : null,
          x.pooled === false ? h("span", { class: "muted small", title: "Sessions of this profile got their process by a resume; the pool keeps no spare of it." }, "live sessions only (resumed)") : null),
        h("td", { class: "num", "data-k": "spares", "data-label": "Spares" }, `${x.ready ?? 0} ready`, x.spawning ? h("span", { class: "muted" }, ` +${x.spawning}`) : null),
        h("td", { class: "num", "data-k": "live", "data-label": "Live" }, String(x.live_sessions ?? 0)),
        h("td", { class: "num", "data-k": "hits", "data-label": "Hit rate" }, `${Math.round((x.hit_rate || 0) * 100)}%`,
          h("span", { class: "muted small" }, `${x.hits ?? 0} hit · ${x.misses ?? 0} miss`)),
        h("td", { class: "num", "data-label": "Target" }, String(x.target ?? "–"), h("span", { class: "muted small" }, `${x.min ?? 0}–${x.max ?? "∞"}`)),
        h("td", { class: "num", "data-label": "Rate λ" }, `${((x.lambda_per_s || 0) * 60).toFixed(2)}/min`, x.tau_s != null ? h("span", { class: "muted small" }, `τ ${Number(x.tau_s).toFixed(1)}s`) : null),
        h("td", { class: "num", "data-label": "Memory" }, fmtMB(x.memory_mb)),
      ),
    ),
  );
  if (!p.profiles.length) $("profiles").append(h("tr", null, h("td", { colspan: "7", class: "muted" }, "No profiles yet.")));
  renderChart();
}

/** Cluster mode: one row per node (`/v1/pool`'s `nodes`); the card stays hidden otherwise. */
function renderNodes(nodes) {
  $("nodes-card").hidden = !Array.isArray(nodes);
  if (!Array.isArray(nodes)) return;
  $("nodes").replaceChildren(
    ...nodes.map((n) => {
      const m = n.memory || {};
      const spares = Object.values(n.spares || {}).reduce((a, x) => a + x, 0);
      return h("tr", { class: n.alive ? null : "failing", "data-node": n.node },
        h("th", { scope: "row" }, h("span", { class: "cwd", title: n.node }, String(n.node || "").slice(0, 12)),
          n.alive ? null : h("span", { class: "badge" }, "lost")),
        h("td", { class: "num", "data-label": "Sessions" }, String(n.sessions ?? 0)),
        h("td", { class: "num", "data-label": "Live" }, String(n.live_processes ?? 0)),
        h("td", { class: "num", "data-label": "Spares" }, String(spares)),
        h("td", { class: "num", "data-label": "Hit rate" }, n.hit_rate == null ? "–" : `${Math.round(n.hit_rate * 100)}%`),
        h("td", { class: "num", "data-label": "Memory" }, `${fmtMB(m.used_mb)} / ${fmtMB(m.budget_mb)}`),
      );
    }),
  );
}

/** A round axis top at or above `v`: 1, 2 or 5 times a power of ten (in MB). */
function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(Math.max(v, 1)));
  return [1, 2, 5, 10].map((m) => m * p).find((x) => x >= v);
}

/** Memory used (area) over the samples of this tab, scaled to the use itself (a budget many
 * times larger would flatten it to a line at the bottom); the budget is drawn (dashed) when it
 * is within twice the peak use, and always named in the legend. */
function renderChart() {
  const pts = state.samples;
  const box = $("chart");
  if (pts.length === 0) return box.replaceChildren(h("p", { class: "muted" }, "No samples yet."));
  const W = 600, H = 160, P = 4;
  const t0 = pts[0].t, t1 = Math.max(pts[pts.length - 1].t, t0 + 1);
  const peak = Math.max(...pts.map((p) => p.used || 0), 1);
  const budgetMax = Math.max(...pts.map((p) => p.budget || 0));
  const top = niceCeil(budgetMax && budgetMax <= 2 * peak ? Math.max(peak * 1.1, budgetMax * 1.02) : peak * 1.25);
  const showBudget = budgetMax > 0 && budgetMax <= top;
  const x = (t) => P + ((t - t0) / (t1 - t0)) * (W - 2 * P);
  const y = (v) => H - P - ((v || 0) / top) * (H - 2 * P);
  let line = "", budget = "";
  pts.forEach((p, i) => {
    // Step lines: a figure holds until the next sample.
    line += i ? ` H${x(p.t).toFixed(1)} V${y(p.used).toFixed(1)}` : `M${x(p.t).toFixed(1)} ${y(p.used).toFixed(1)}`;
    budget += i ? ` H${x(p.t).toFixed(1)} V${y(p.budget).toFixed(1)}` : `M${x(p.t).toFixed(1)} ${y(p.budget).toFixed(1)}`;
  });
  if (pts.length === 1) {
    line += ` H${W - P}`;
    budget += ` H${W - P}`;
  }
  const area = `${line} V${H - P} H${P} Z`;
  const last = pts[pts.length - 1];
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Memory used ${fmtMB(last.used)} of a ${fmtMB(last.budget)} budget`);
  const paths = [[area, "area"], [line, "used"]];
  if (showBudget) paths.push([budget, "budget"]);
  for (const [d, cls] of paths) {
    const path = document.createElementNS(NS, "path");
    path.setAttribute("d", d);
    path.setAttribute("class", cls);
    path.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(path);
  }
  const span = (t1 - t0) / 1000;
  box.replaceChildren(
    h("div", { class: "plot" }, svg, h("span", { class: "y-top muted" }, fmtMB(top)), h("span", { class: "y-zero muted" }, "0")),
    h("div", { class: "chart-legend" },
      h("span", { class: "k-used" }, `used ${fmtMB(last.used)}`),
      h("span", { class: "k-budget" }, `budget ${fmtMB(last.budget)}${showBudget ? "" : " (above the chart)"}`),
      h("span", { class: "muted" }, `${pts.length} sample${pts.length > 1 ? "s" : ""}${span >= 1 ? ` over ${fmtS(span * 1000)}` : ""}`)),
  );
}

// ---------------------------------------------------------------- routing, login, keys

function route() {
  const hash = location.hash || "#/";
  const m = /^#\/sessions\/(.+)$/.exec(hash);
  state.view = hash === "#/pool" ? "pool" : "sessions";
  if (!state.token) return showLogin();
  for (const v of ["login", "sessions", "pool"]) $(`${v}-view`).hidden = v !== state.view;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === state.view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (state.view === "sessions") select(m ? decodeURIComponent(m[1]) : null);
  if (state.view === "pool") renderPool();
}

function showLogin(message) {
  for (const v of ["sessions", "pool"]) $(`${v}-view`).hidden = true;
  $("login-view").hidden = false;
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("poolsum").textContent = "";
  $("login-error").textContent = message || "";
  $("token").focus();
}

function signOut(message) {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.follow) state.follow.ctl.abort();
  state.follow = null;
  if (state.feed) state.feed.abort();
  state.feed = null;
  state.sessions.clear();
  state.convs.clear();
  state.selected = null;
  showLogin(message);
}

async function signIn(e) {
  e.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  const res = await fetch("v1/sessions", { headers: { Authorization: `Bearer ${token}` } });
  if (!res.ok) {
    $("login-error").textContent = res.status === 401 ? "That token was refused." : `The daemon answered ${res.status}.`;
    return;
  }
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  start();
}

function start() {
  $("login-view").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  route();
  openFeed();
}

function onKey(e) {
  const t = e.target;
  const typing = t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement;
  if (t === $("prompt")) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("prompt-form").requestSubmit();
    } else if (e.key === "Escape" && !$("interrupt").disabled) {
      e.preventDefault();
      $("interrupt").click();
    }
    return;
  }
  if (typing || e.ctrlKey || e.metaKey || e.altKey || !state.token || document.querySelector("dialog[open]")) return;
  if (e.key === "n") (e.preventDefault(), openDialog("new-dialog"));
  else if (e.key === "q") (e.preventDefault(), openDialog("ask-dialog"));
  else if (e.key === "/" && state.selected) (e.preventDefault(), $("prompt").focus());
  else if (e.key === "p") location.hash = "#/pool";
  else if (e.key === "s") location.hash = state.selected ? `#/sessions/${encodeURIComponent(state.selected)}` : "#/";
}

function openDialog(id) {
  if (state.view !== "sessions") location.hash = "#/";
  const dlg = $(id);
  dlg.querySelector(".err").textContent = "";
  $("cwds").replaceChildren(...knownCwds().map((cwd) => h("option", { value: cwd })));
  dlg.showModal();
}

function init() {
  fillOpts($("new-form"));
  fillOpts($("ask-form"));
  $("login-form").addEventListener("submit", signIn);
  $("logout").addEventListener("click", () => signOut());
  $("new-btn").addEventListener("click", () => openDialog("new-dialog"));
  $("ask-btn").addEventListener("click", () => openDialog("ask-dialog"));
  $("new-form").addEventListener("submit", createSession);
  $("ask-form").addEventListener("submit", quickTurn);
  $("prompt-form").addEventListener("submit", (e) => (e.preventDefault(), sendPrompt()));
  $("interrupt").addEventListener("click", async () => {
    const id = state.selected;
    try {
      await api("POST", `v1/sessions/${encodeURIComponent(id)}/interrupt`);
    } catch (e) {
      toast(e.message);
    }
  });
  $("d-close").addEventListener("click", async () => {
    const id = state.selected;
    if (!confirm(`Close session ${id}? Its process ends.`)) return;
    try {
      await api("DELETE", `v1/sessions/${encodeURIComponent(id)}`);
    } catch (e) {
      toast(e.message);
    }
  });
  document.addEventListener("keydown", onKey);
  $("log").addEventListener("scroll", onLogScroll, { passive: true });
  addEventListener("hashchange", route);
  fetch("healthz").then((r) => r.json()).then((hz) => {
    document.querySelector(".brand").title = `hotsession ${hz.version || ""} · Claude Code ${(hz.cli && hz.cli.version) || ""}`;
  }).catch(() => {});
  if (state.token) start();
  else showLogin();
}

init();
