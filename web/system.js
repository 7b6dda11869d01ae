// The system map (/system, admins): the services as boxes with their instances, the
// gateway in front, the queues between them with depth and consumers, and every message
// moving along the arrows as it is published, delivered and settled — from the
// gateway's GET /admin/system/stream. A click on a service shows its routes, rates and
// recent errors; on a queue its dead letters (inspect, replay); on a message its trace.
import { api, getJson } from "./api.js";
import { openStream } from "./live.js";
import { session } from "./state.js";
import { el, feedback, setText } from "./ui.js";

const COLUMN = 200; // px between columns
const ROW = 132; // px between rows
const BOX_W = 168;
const BOX_H = 112;
const TRAVEL_MS = 900; // a dot's trip along one arrow
const LOG_SIZE = 60;

const state = {
  view: null, // the last GET /admin/system (or `system` event)
  boxes: new Map(), // "service:NAME" | "queue:GROUP" → { node, x, y }
  messages: new Map(), // message id → { id, routing_key, trace_id, steps: [...] }
  stream: null,
  selected: null, // { kind, name }
  sampled: 0,
};

const $ = (id) => document.getElementById(id);

export function mountSystem({ connection }) {
  if (location.pathname !== "/system") return;
  document.body.classList.add("system-page");
  for (const id of ["media", "media-teaser", "blog"]) $(id).hidden = true;
  $("system").hidden = false;
  const start = () => {
    state.stream?.close();
    state.stream = null;
    const user = session.user;
    $("system-gate").hidden = !!user?.admin;
    $("system-body").hidden = !user?.admin;
    $("account").hidden = !!user?.admin;
    if (!user) {
      setText($("system-gate"), "Log in as an admin to see the system map.");
      connection("system", null);
      return;
    }
    if (!user.admin) {
      setText($("system-gate"), "The system map is for admins: log in with an admin's account.");
      connection("system", null);
      return;
    }
    connection("system", "connecting");
    getJson("/admin/system").then(render).catch(() => {});
    state.stream = openStream("/admin/system/stream", {
      token: session.token,
      onState: (s) => connection("system", s),
      onRefused: (status, message) => {
        connection("system", null);
        setText($("system-gate"), message);
        $("system-gate").hidden = false;
      },
      onEvent,
    });
  };
  session.subscribe(start);
  start();
}

function onEvent(name, data) {
  let value;
  try {
    value = JSON.parse(data);
  } catch {
    return;
  }
  if (name === "hello") connectionLive();
  else if (name === "system") render(value);
  else if (name === "message") message(value);
  else if (name === "instance") {
    logLine(
      `${value.change === "up" ? "▲" : "▼"} ${value.service} instance ${value.id} ${value.change === "up" ? "registered" : value.reason}`,
      value.change === "up" ? "ok" : "bad",
    );
    getJson("/admin/system").then(render).catch(() => {});
  } else if (name === "sampled") {
    state.sampled += value.dropped || 0;
    setText($("system-sampled"), `Sampled: ${state.sampled} messages not shown (the page fell behind; the system was not slowed).`);
    $("system-sampled").hidden = false;
  }
}

function connectionLive() {
  $("system-body").classList.add("live");
}

// ---- layout ----

// Columns: the gateway, the services it routes to, then alternately queues and the
// services that consume them, as far as the messages go.
function layout(view) {
  const services = new Map(view.services.map((s) => [s.name, s]));
  const column = new Map();
  column.set("service:gateway", 0);
  for (const s of view.services) {
    if (s.name !== "gateway" && s.routes.length > 0) column.set("service:" + s.name, 1);
  }
  for (let round = 0; round < 8; round++) {
    for (const q of view.queues) {
      const from = q.published_by.map((p) => column.get("service:" + p)).filter((c) => c !== undefined);
      const at = from.length ? Math.max(...from) + 1 : 2;
      column.set("queue:" + q.group, Math.min(at, 8));
      for (const consumer of q.consumed_by) {
        const key = "service:" + consumer;
        const s = services.get(consumer);
        if (s && s.routes.length === 0 && s.name !== "gateway") {
          column.set(key, Math.max(column.get(key) ?? 0, Math.min(at + 1, 9)));
        }
      }
    }
  }
  for (const s of view.services) if (!column.has("service:" + s.name)) column.set("service:" + s.name, 1);
  // Rows: in each column, in a stable order (the media pipeline first: it is the demo).
  const order = ["gateway", "media", "video", "converter", "notification", "auth"];
  const rank = (key) => {
    const name = key.split(":")[1];
    const i = order.indexOf(name);
    return i < 0 ? order.length : i;
  };
  const byColumn = new Map();
  for (const [key, c] of column) {
    if (!byColumn.has(c)) byColumn.set(c, []);
    byColumn.get(c).push(key);
  }
  const positions = new Map();
  const columns = [...byColumn.keys()].sort((a, b) => a - b);
  columns.forEach((c, index) => {
    const keys = byColumn.get(c).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    keys.forEach((key, row) => positions.set(key, { x: 16 + index * COLUMN, y: 16 + row * ROW }));
  });
  const maxRows = Math.max(...[...byColumn.values()].map((k) => k.length));
  return { positions, width: 16 + columns.length * COLUMN, height: 16 + maxRows * ROW };
}

// ---- drawing ----

function render(view) {
  if (!view || !Array.isArray(view.services)) return;
  state.view = view;
  const map = $("system-map");
  const arrows = $("system-arrows");
  const { positions, width, height } = layout(view);
  map.style.width = width + "px";
  map.style.height = height + "px";
  arrows.setAttribute("viewBox", `0 0 ${width} ${height}`);
  arrows.setAttribute("width", width);
  arrows.setAttribute("height", height);
  const seen = new Set();
  for (const s of view.services) {
    const key = "service:" + s.name;
    seen.add(key);
    const healthy = s.instances.filter((i) => i.status === "up").length;
    drawBox(key, positions.get(key), {
      kind: "service",
      title: s.name,
      badge: `${s.instances.length} instance${s.instances.length === 1 ? "" : "s"}`,
      health: s.instances.map((i) => i.status),
      status: healthy === s.instances.length ? "ok" : "warn",
      caption: s.caption,
      extra: s.requests_per_s == null ? "" : `${s.requests_per_s.toFixed(1)} req/s` + (s.error_ratio ? ` · ${(s.error_ratio * 100).toFixed(1)} % errors` : ""),
      onclick: () => select("service", s.name),
    });
  }
  for (const q of view.queues) {
    const key = "queue:" + q.group;
    seen.add(key);
    // Named by what travels in it (`video`, `mp3`); the group is its consumers' name.
    const title = q.routing_keys.length === 1 && !/[*#]/.test(q.routing_keys[0]) ? q.routing_keys[0] : q.group;
    drawBox(key, positions.get(key), {
      kind: "queue",
      title,
      badge: `depth ${q.depth ?? "?"} · ${q.consumers ?? "?"} consumer${q.consumers === 1 ? "" : "s"}`,
      status: q.dead_letters ? "bad" : "ok",
      caption: title === q.group ? `Messages: ${q.routing_keys.join(", ")}` : `Group “${q.group}”: messages wait here for ${q.consumed_by.join(", ")}`,
      extra: q.dead_letters ? `${q.dead_letters} dead letter${q.dead_letters === 1 ? "" : "s"}` : `${q.in_flight ?? 0} in flight`,
      onclick: () => select("queue", q.group),
    });
  }
  for (const [key, box] of state.boxes) {
    if (!seen.has(key)) {
      box.node.remove();
      state.boxes.delete(key);
    }
  }
  drawArrows(view);
  setText($("system-bus"), `Bus: ${view.bus.backend} (${view.bus.state})${view.bus.detail ? " — " + view.bus.detail : ""}`);
  $("system-bus").dataset.state = view.bus.state;
  if (state.selected) showDetails();
}

function drawBox(key, position, spec) {
  let box = state.boxes.get(key);
  if (!box) {
    const node = el(
      "button",
      { type: "button", class: `box ${spec.kind}`, "data-key": key, onclick: spec.onclick },
      el("span", { class: "box-title" }),
      el("span", { class: "box-badge" }),
      el("span", { class: "box-health" }),
      el("span", { class: "box-caption" }),
      el("span", { class: "box-extra" }),
    );
    $("system-map").append(node);
    box = { node };
    state.boxes.set(key, box);
  }
  box.x = position.x;
  box.y = position.y;
  const node = box.node;
  node.style.left = position.x + "px";
  node.style.top = position.y + "px";
  node.dataset.status = spec.status;
  node.setAttribute("aria-label", `${spec.kind} ${spec.title}: ${spec.badge}. ${spec.caption}`);
  setText(node.querySelector(".box-title"), spec.title);
  setText(node.querySelector(".box-badge"), spec.badge);
  setText(node.querySelector(".box-caption"), spec.caption);
  setText(node.querySelector(".box-extra"), spec.extra || "");
  const health = node.querySelector(".box-health");
  health.replaceChildren(...(spec.health || []).map((h) => el("i", { class: "pip " + h, title: h })));
}

function center(key, side) {
  const box = state.boxes.get(key);
  if (!box) return null;
  const x = side === "in" ? box.x : side === "out" ? box.x + BOX_W : box.x + BOX_W / 2;
  return { x, y: box.y + BOX_H / 2 };
}

function edges(view) {
  const list = [];
  for (const s of view.services) {
    if (s.name !== "gateway" && s.routes.length > 0) list.push(["service:gateway", "service:" + s.name]);
  }
  for (const q of view.queues) {
    for (const p of q.published_by) list.push(["service:" + p, "queue:" + q.group]);
    for (const c of q.consumed_by) list.push(["queue:" + q.group, "service:" + c]);
  }
  return list;
}

function path(from, to) {
  const a = center(from, "out");
  const b = center(to, "in");
  if (!a || !b) return null;
  if (b.x <= a.x) {
    // Backwards (a service consuming what a later one publishes): loop below.
    const low = Math.max(a.y, b.y) + BOX_H / 2 + 14;
    return { d: `M ${a.x} ${a.y} C ${a.x + 60} ${low}, ${b.x - 60} ${low}, ${b.x} ${b.y}`, a, b, back: true };
  }
  const mid = (a.x + b.x) / 2;
  return { d: `M ${a.x} ${a.y} C ${mid} ${a.y}, ${mid} ${b.y}, ${b.x} ${b.y}`, a, b, back: false };
}

const SVG = "http://www.w3.org/2000/svg";

function drawArrows(view) {
  const svg = $("system-arrows");
  const keep = svg.querySelector("defs");
  svg.replaceChildren(keep);
  for (const [from, to] of edges(view)) {
    const p = path(from, to);
    if (!p) continue;
    const line = document.createElementNS(SVG, "path");
    line.setAttribute("d", p.d);
    line.setAttribute("class", "arrow" + (p.back ? " back" : ""));
    line.setAttribute("marker-end", "url(#arrowhead)");
    line.dataset.edge = from + ">" + to;
    svg.append(line);
  }
}

// ---- messages ----

function queuesFor(routingKey) {
  if (!state.view) return [];
  return state.view.queues.filter((q) => q.routing_keys.some((p) => topicMatches(p, routingKey)));
}

function topicMatches(pattern, key) {
  const go = (p, k) => {
    if (p.length === 0) return k.length === 0;
    if (p[0] === "#") return [...Array(k.length + 1).keys()].some((skip) => go(p.slice(1), k.slice(skip)));
    return k.length > 0 && (p[0] === "*" || p[0] === k[0]) && go(p.slice(1), k.slice(1));
  };
  return go(pattern.split("."), key.split("."));
}

function message(m) {
  let known = state.messages.get(m.message_id);
  if (!known) {
    known = { id: m.message_id, routing_key: m.routing_key, trace_id: m.trace_id, steps: [] };
    state.messages.set(m.message_id, known);
    if (state.messages.size > 500) state.messages.delete(state.messages.keys().next().value);
  }
  known.steps.push(m);
  const services = new Map((state.view?.services || []).map((s) => [s.name, s]));
  if (m.outcome === "published") {
    const publisher = m.publisher && services.get(m.publisher);
    // A service the gateway routes to publishes because a request came through it.
    const delay = publisher && publisher.routes.length > 0 ? TRAVEL_MS : 0;
    if (delay) fly("service:gateway", "service:" + m.publisher, m);
    for (const q of queuesFor(m.routing_key)) {
      setTimeout(() => fly("service:" + m.publisher, "queue:" + q.group, m), delay);
    }
  } else if (m.outcome === "delivered" && m.group) {
    const q = state.view?.queues.find((x) => x.group === m.group);
    for (const consumer of q?.consumed_by || []) fly("queue:" + m.group, "service:" + consumer, m);
  } else if (m.group) {
    const q = state.view?.queues.find((x) => x.group === m.group);
    const kind = { handled: "ok", retried: "warn", dead_lettered: "bad", requeued: "warn" }[m.outcome] || "ok";
    for (const consumer of q?.consumed_by || []) flash("service:" + consumer, kind);
    if (m.outcome === "dead_lettered") flash("queue:" + m.group, "bad");
  }
  logMessage(m);
  if (state.selected?.kind === "message" && state.selected.name === m.message_id) showDetails();
}

function fly(from, to, m) {
  const p = path(from, to);
  if (!p) return;
  const svg = $("system-arrows");
  const probe = document.createElementNS(SVG, "path");
  probe.setAttribute("d", p.d);
  const length = probe.getTotalLength();
  const dot = el("button", {
    type: "button",
    class: "dot " + (m.outcome === "delivered" ? "delivered" : "published"),
    title: `${m.routing_key} ${m.message_id}`,
    "aria-label": `message ${m.routing_key} ${m.message_id}`,
    "data-message": m.message_id,
    "data-routing-key": m.routing_key,
    onclick: () => select("message", m.message_id),
  });
  $("system-map").append(dot);
  const edge = svg.querySelector(`[data-edge="${CSS.escape(from + ">" + to)}"]`);
  edge?.classList.add("busy");
  const started = performance.now();
  const step = (now) => {
    const t = Math.min(1, (now - started) / TRAVEL_MS);
    const eased = t < 0.5 ? 2 * t * t : 1 - (-2 * t + 2) ** 2 / 2;
    const point = probe.getPointAtLength(eased * length);
    dot.style.left = point.x - 7 + "px";
    dot.style.top = point.y - 7 + "px";
    if (t < 1) requestAnimationFrame(step);
    else
      setTimeout(() => {
        dot.remove();
        edge?.classList.remove("busy");
      }, 1200);
  };
  requestAnimationFrame(step);
}

function flash(key, kind) {
  const box = state.boxes.get(key);
  if (!box) return;
  box.node.classList.remove("flash-ok", "flash-warn", "flash-bad");
  void box.node.offsetWidth; // restart the animation
  box.node.classList.add("flash-" + kind);
}

const OUTCOME_TEXT = {
  published: "published",
  delivered: "delivered to",
  handled: "handled by",
  retried: "retried by",
  dead_lettered: "dead-lettered in",
  requeued: "requeued by",
};

function logMessage(m) {
  const who = m.outcome === "published" ? m.publisher || "?" : m.group || "?";
  const row = el(
    "li",
    { class: "log-row " + m.outcome },
    el("button", { type: "button", class: "link", onclick: () => select("message", m.message_id), text: m.routing_key }),
    el("span", { class: "outcome", text: ` ${OUTCOME_TEXT[m.outcome] || m.outcome} ` }),
    el("strong", { text: who }),
    el("time", { class: "muted", text: " " + new Date(m.at_ms).toLocaleTimeString() }),
  );
  addLog(row);
}

function logLine(text, kind) {
  addLog(el("li", { class: "log-row " + kind, text }));
}

function addLog(row) {
  const log = $("system-log");
  log.prepend(row);
  while (log.children.length > LOG_SIZE) log.lastElementChild.remove();
}

// ---- details ----

function select(kind, name) {
  state.selected = { kind, name };
  for (const [key, box] of state.boxes) box.node.classList.toggle("selected", key === `${kind}:${name}`);
  showDetails();
}

function showDetails() {
  const panel = $("system-details");
  const { kind, name } = state.selected;
  panel.hidden = false;
  if (kind === "service") {
    const s = state.view?.services.find((x) => x.name === name);
    if (!s) return;
    panel.replaceChildren(
      el("h3", { text: s.name }),
      el("p", { class: "caption", text: s.caption }),
      el(
        "p",
        { class: "rates" },
        rate("requests/s", s.requests_per_s?.toFixed(2)),
        rate("errors", s.error_ratio == null ? null : (s.error_ratio * 100).toFixed(1) + " %"),
        rate("p99", s.p99_ms == null ? null : s.p99_ms.toFixed(0) + " ms"),
      ),
      el("h4", { text: "Instances" }),
      el(
        "ul",
        { class: "plain" },
        ...s.instances.map((i) =>
          el("li", {}, el("i", { class: "pip " + i.status }), ` ${i.id} — ${i.url} — v${i.version}, since ${new Date(i.started_at).toLocaleTimeString()}`),
        ),
      ),
      el("h4", { text: "Routes through the gateway" }),
      s.routes.length
        ? el("ul", { class: "plain mono" }, ...s.routes.map((r) => el("li", { text: r })))
        : el("p", { class: "muted", text: "None: it only works on messages." }),
      el("h4", { text: "Recent errors" }),
      s.recent_errors.length
        ? el(
            "ul",
            { class: "plain" },
            ...s.recent_errors.map((e) =>
              el("li", { class: "error-row" }, el("strong", { text: e.outcome.replace("_", "-") }), ` ${e.routing_key} (${e.group}) at ${new Date(e.at).toLocaleTimeString()}: ${e.reason || ""}`),
            ),
          )
        : el("p", { class: "muted", text: "None in the last messages." }),
    );
  } else if (kind === "queue") {
    const q = state.view?.queues.find((x) => x.group === name);
    if (!q) return;
    const list = el("ul", { class: "plain dead-letters" }, el("li", { class: "muted", text: "Loading dead letters…" }));
    const note = el("p", { class: "feedback", hidden: true, role: "status" });
    panel.replaceChildren(
      el("h3", { text: `${q.group} (queue)` }),
      el("p", { class: "caption", text: q.caption }),
      el(
        "p",
        { class: "rates" },
        rate("depth", q.depth),
        rate("in flight", q.in_flight),
        rate("consumers", q.consumers),
        rate("dead letters", q.dead_letters),
        rate("published/s", q.publish_per_s.toFixed(2)),
        rate("delivered/s", q.deliver_per_s.toFixed(2)),
      ),
      el("p", { class: "muted", text: `Routing keys: ${q.routing_keys.join(", ")} · from ${q.published_by.join(", ") || "—"} · to ${q.consumed_by.join(", ")}` }),
      el("h4", {}, "Dead letters ", el("button", { type: "button", class: "secondary small", id: "replay-all", onclick: () => replay(q.group, null, note) }, "Replay all")),
      note,
      list,
    );
    loadDeadLetters(q.group, list, note);
  } else if (kind === "message") {
    const m = state.messages.get(name);
    if (!m) return;
    const template = state.view?.trace_url_template;
    panel.replaceChildren(
      el("h3", { text: `Message ${m.routing_key}` }),
      el("p", { class: "mono", text: `id ${m.id}` }),
      el(
        "p",
        { class: "mono" },
        "trace ",
        m.trace_id && template
          ? el("a", { href: template.replace("{trace_id}", m.trace_id), target: "_blank", rel: "noopener", text: m.trace_id })
          : el("span", { text: m.trace_id || "—", id: "trace-id" }),
      ),
      el(
        "ol",
        { class: "steps" },
        ...m.steps.map((s) =>
          el("li", { text: `${OUTCOME_TEXT[s.outcome] || s.outcome} ${s.outcome === "published" ? s.publisher || "" : s.group || ""}${s.attempt ? ` (attempt ${s.attempt})` : ""}${s.reason ? ": " + s.reason : ""}` }),
        ),
      ),
    );
  }
}

function rate(label, value) {
  return el("span", { class: "rate" }, el("strong", { text: value == null ? "—" : String(value) }), el("small", { text: label }));
}

async function loadDeadLetters(group, list, note) {
  try {
    const found = await getJson(`/admin/dead-letters?group=${encodeURIComponent(group)}&limit=50`);
    if (found.dead_letters.length === 0) {
      list.replaceChildren(el("li", { class: "muted", text: "No dead letters. 🎉" }));
      return;
    }
    list.replaceChildren(
      ...found.dead_letters.map((d) => {
        const body = el("pre", { class: "inspect", hidden: true, text: `reason: ${d.reason}\nattempts: ${d.attempts}\ntrace: ${d.trace_id || "—"}\n\n${d.body}` });
        return el(
          "li",
          { class: "dead-letter" },
          el("span", { class: "mono", text: `${d.routing_key} ${d.id.slice(0, 18)}…` }),
          el("span", { class: "muted", text: ` ${d.reason.slice(0, 80)}` }),
          el(
            "span",
            { class: "actions" },
            el("button", { type: "button", class: "secondary small", onclick: () => (body.hidden = !body.hidden) }, "Inspect"),
            el("button", { type: "button", class: "small", onclick: () => replay(group, d.id, note) }, "Replay"),
          ),
          body,
        );
      }),
    );
  } catch (error) {
    list.replaceChildren(el("li", { class: "muted", text: error.message }));
  }
}

async function replay(group, id, note) {
  try {
    const body = id ? { group, ids: [id] } : { group, all: true };
    const answer = await (await api("/admin/dead-letters/replay", { method: "POST", json: body })).json();
    feedback(note, `Replayed ${answer.replayed} message${answer.replayed === 1 ? "" : "s"} into ${group}.`, "success");
    getJson("/admin/system").then(render).catch(() => {});
  } catch (error) {
    feedback(note, error.message, "error");
  }
}
