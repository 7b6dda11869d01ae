// The system map (/system, admins): the services as boxes with their instances, the
// gateway in front, the queues between them with depth and consumers, and every message
// moving along the arrows as it is published, delivered and settled — from the
// gateway's GET /admin/system/stream. A click on a service shows its routes, rates and
// recent errors; on a queue its dead letters (inspect, replay); on a message its trace.
import { api, getJson } from "./api.js";
import { openStream } from "./live.js";
import { session } from "./state.js";
import { el, feedback, setText } from "./ui.js";

// Sizes of the map, in px. A box's width follows the space there is (between the two
// bounds); its height follows its caption, so that every caption is read in full.
const PAD = 12;
const BOX_MIN_W = 150;
const BOX_MAX_W = 230;
const GAP_MIN = 30; // between two columns: room for the arrows
const ROW_GAP = 22; // between two boxes in one column
const BAND_GAP = 34; // between two bands (the media flow, the blog, …)
const LANE = 16; // the height of an arrow passing through a column (no box there)
const TRAVEL_MS = 900; // a dot's trip along one arrow
const LOG_SIZE = 60;

const state = {
  view: null, // the last GET /admin/system (or `system` event)
  boxes: new Map(), // "service:NAME" | "queue:GROUP" → { node, x, y, w, h }
  paths: new Map(), // "from>to" → the SVG path of its arrow
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
  // The boxes' width follows the window's: lay the map out again once a resize settles.
  let pending = null;
  addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(() => state.view && render(state.view), 120);
  });
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
//
// A layered drawing of the graph (Sugiyama's method; small enough to write here rather
// than vendor a library, and web/ has no build step). The nodes are the services and the
// queues; the edges gateway → each service it routes to, publisher → queue, queue →
// consumer.
//  1. Bands: each part of the graph that hangs together without the gateway (the media
//     flow, the blog, auth) gets a horizontal band of its own, the media flow on top.
//  2. Columns: a depth-first walk from the gateway marks the edges that close a cycle
//     (media-jobs → media: the converter reports back) as back edges, drawn dashed and
//     leftwards; on the others a node's column is its longest path from the gateway, so
//     every other arrow points right.
//  3. An arrow spanning several columns passes each column in a lane of its own (a
//     placeholder node), so that it runs between boxes, never through one.
//  4. Order in a column: barycenter sweeps (a node moves to the mean place of its
//     neighbours in the column before, then after), keeping the order with the fewest
//     crossings.
//  5. Heights: a node moves to the mean height of its neighbours without overlapping the
//     next, last from left to right, so a chain (gateway → media → video → converter →
//     mp3 → notification) lies on one line.

const GATEWAY = "service:gateway";
const FIRST_BANDS = ["service:media"]; // the demo flow goes on top

function graph(view) {
  const nodes = [...view.services.map((s) => "service:" + s.name), ...view.queues.map((q) => "queue:" + q.group)];
  const known = new Set(nodes);
  const edges = [];
  const seen = new Set();
  const add = (from, to) => {
    const key = from + ">" + to;
    if (from === to || !known.has(from) || !known.has(to) || seen.has(key)) return;
    seen.add(key);
    edges.push([from, to]);
  };
  for (const s of view.services) {
    if (s.name !== "gateway" && s.routes.length > 0) add(GATEWAY, "service:" + s.name);
  }
  for (const q of view.queues) {
    for (const p of q.published_by) add("service:" + p, "queue:" + q.group);
    for (const c of q.consumed_by) add("queue:" + q.group, "service:" + c);
  }
  // A service fed over HTTP, not by a queue: the query service follows the event log.
  // Drawn as an arrow back, like media-jobs → media: the reader sits in the column its
  // routes give it, not one past the log (which would widen the blog's band).
  const follows = new Set();
  for (const s of view.services) {
    for (const r of s.reads_from || []) {
      add("service:" + r, "service:" + s.name);
      follows.add("service:" + r + ">service:" + s.name);
    }
  }
  return { nodes, edges, follows };
}

// Everything but sizes: columns, bands, order in a column, the lanes of long arrows.
function structure(view) {
  const { nodes, edges, follows } = graph(view);
  const out = new Map(nodes.map((n) => [n, []]));
  const into = new Map(nodes.map((n) => [n, []]));
  for (const [a, b] of edges) {
    out.get(a).push(b);
    into.get(b).push(a);
  }
  // 2. Back edges: those reaching a node still on the walk's stack.
  //    A service following another's log is always one (see `graph`).
  const back = new Set(follows);
  const mark = new Map(); // 1: on the stack, 2: done
  const visit = (n) => {
    mark.set(n, 1);
    for (const m of out.get(n)) {
      if (follows.has(n + ">" + m)) continue;
      if (mark.get(m) === 1) back.add(n + ">" + m);
      else if (!mark.has(m)) visit(m);
    }
    mark.set(n, 2);
  };
  if (out.has(GATEWAY)) visit(GATEWAY);
  for (const n of nodes) if (!mark.has(n) && into.get(n).length === 0) visit(n);
  for (const n of nodes) if (!mark.has(n)) visit(n);
  // The graph the columns come from: back edges turned round, so it has no cycle.
  const flow = edges.map(([a, b]) => (back.has(a + ">" + b) ? [b, a] : [a, b]));
  const succ = new Map(nodes.map((n) => [n, []]));
  const pred = new Map(nodes.map((n) => [n, []]));
  for (const [a, b] of flow) {
    succ.get(a).push(b);
    pred.get(b).push(a);
  }
  // A node nothing leads to (a queue whose publishers were not seen yet: they are known
  // once they publish) goes just before what it feeds, even beside the gateway, rather
  // than pushing what it feeds to the right.
  const loose = new Set(nodes.filter((n) => n !== GATEWAY && pred.get(n).length === 0 && succ.get(n).length > 0));
  const rank = new Map();
  const rankOf = (n) => {
    if (rank.has(n)) return rank.get(n);
    rank.set(n, 0); // (no cycle is left; this only guards the recursion)
    const from = pred.get(n).filter((p) => !loose.has(p));
    const r = Math.max(n === GATEWAY ? 0 : 1, ...from.map((p) => rankOf(p) + 1));
    rank.set(n, r);
    return r;
  };
  for (const n of nodes) if (!loose.has(n)) rankOf(n);
  for (const n of loose) rank.set(n, Math.max(0, Math.min(...succ.get(n).map((m) => rank.get(m))) - 1));
  // How far the longest chain goes on from a node: the main line is drawn first.
  const reach = new Map();
  const reachOf = (n) => {
    if (!reach.has(n)) reach.set(n, Math.max(0, ...succ.get(n).map((m) => rank.get(m) - rank.get(n) + reachOf(m))));
    return reach.get(n);
  };
  nodes.forEach(reachOf);
  // 1. Bands: connected without the gateway.
  const root = new Map(nodes.map((n) => [n, n]));
  const find = (n) => (root.get(n) === n ? n : find(root.get(n)));
  for (const [a, b] of flow) if (a !== GATEWAY && b !== GATEWAY) root.set(find(a), find(b));
  const bandOf = new Map();
  for (const n of nodes) {
    if (n === GATEWAY) continue;
    const r = find(n);
    if (!bandOf.has(r)) bandOf.set(r, []);
    bandOf.get(r).push(n);
  }
  const first = (band) => {
    const i = FIRST_BANDS.findIndex((n) => band.includes(n));
    return i < 0 ? FIRST_BANDS.length : i;
  };
  const bands = [...bandOf.values()].sort((a, b) => first(a) - first(b) || b.length - a.length || a[0].localeCompare(b[0]));
  // 3. Lanes: a flow edge over k columns becomes a chain through k − 1 lanes.
  const band = new Map();
  bands.forEach((members, i) => members.forEach((n) => band.set(n, i)));
  const layers = bands.map(() => new Map()); // band → column → [node]
  const put = (b, n) => {
    const column = rank.get(n);
    if (!layers[b].has(column)) layers[b].set(column, []);
    layers[b].get(column).push(n);
  };
  // The gateway heads the first band: that band's first line starts at it.
  if (nodes.includes(GATEWAY)) {
    if (!layers.length) layers.push(new Map());
    put(0, GATEWAY);
  }
  const order = (a, b) => reach.get(b) + rank.get(b) - (reach.get(a) + rank.get(a)) || nodes.indexOf(a) - nodes.indexOf(b);
  for (const n of [...nodes].sort(order)) if (n !== GATEWAY) put(band.get(n), n);
  const links = []; // [a, b] between neighbouring columns
  const chains = new Map(); // "from>to" of an edge → [a, lanes…, b] in the flow's direction
  for (const [from, to] of edges) {
    const backwards = back.has(from + ">" + to);
    const [a, b] = backwards ? [to, from] : [from, to];
    const chain = [a];
    const home = band.get(b);
    for (let column = rank.get(a) + 1; column < rank.get(b); column++) {
      // Arrows from one source share their lanes until they part (a bundle, not a fan
      // of parallel lines); an arrow back has lanes of its own.
      const lane = `lane:${a}:${backwards ? "back" : "on"}:${home}:${column}`;
      if (!rank.has(lane)) {
        rank.set(lane, column);
        reach.set(lane, -1);
        put(home, lane);
      }
      chain.push(lane);
    }
    chain.push(b);
    chains.set(`${from}>${to}`, chain);
    for (let i = 1; i < chain.length; i++) links.push([chain[i - 1], chain[i]]);
  }
  const linked = new Set();
  const up = new Map();
  const down = new Map();
  for (const [a, b] of links) {
    if (linked.has(a + ">" + b)) continue;
    linked.add(a + ">" + b);
    if (!down.has(a)) down.set(a, []);
    if (!up.has(b)) up.set(b, []);
    down.get(a).push(b);
    up.get(b).push(a);
  }
  // 4. Order in each column of each band.
  const columns = Math.max(0, ...rank.values()) + 1;
  for (const layer of layers) sweep(layer, columns, up, down);
  return { rank, back, chains, layers, columns, up, down };
}

function sweep(layer, columns, up, down) {
  const place = new Map([[GATEWAY, 0]]);
  const note = () => {
    for (const nodes of layer.values()) nodes.forEach((n, i) => place.set(n, i));
  };
  const crossings = () => {
    let count = 0;
    for (const [column, nodes] of layer) {
      const next = layer.get(column + 1);
      if (!next) continue;
      const pairs = nodes.flatMap((a) => (down.get(a) || []).filter((b) => next.includes(b)).map((b) => [place.get(a), place.get(b)]));
      for (let i = 0; i < pairs.length; i++)
        for (let j = i + 1; j < pairs.length; j++) if ((pairs[i][0] - pairs[j][0]) * (pairs[i][1] - pairs[j][1]) < 0) count++;
    }
    // Between orders with as many crossings: boxes above lanes (the lanes run below).
    let lanesAbove = 0;
    for (const nodes of layer.values()) {
      nodes.forEach((n, i) => {
        if (!n.startsWith("lane:")) lanesAbove += nodes.slice(0, i).filter((m) => m.startsWith("lane:")).length;
      });
    }
    return count * 1000 + lanesAbove;
  };
  const arrange = (column, side) => {
    const nodes = layer.get(column);
    if (!nodes) return;
    const mean = (n) => {
      const near = (side.get(n) || []).filter((m) => place.has(m));
      return near.length ? near.reduce((sum, m) => sum + place.get(m), 0) / near.length : place.get(n);
    };
    const keyed = nodes.map((n) => [mean(n), n]);
    // Stable: ties keep their order, but a box goes before a lane (lanes run below).
    keyed.sort((a, b) => a[0] - b[0] || a[1].startsWith("lane:") - b[1].startsWith("lane:"));
    layer.set(column, keyed.map(([, n]) => n));
    layer.get(column).forEach((n, i) => place.set(n, i));
  };
  note();
  let best = crossings();
  let kept = new Map([...layer].map(([c, n]) => [c, [...n]]));
  for (let round = 0; round < 8; round++) {
    for (let c = 1; c < columns; c++) arrange(c, up);
    for (let c = columns - 2; c >= 1; c--) arrange(c, down);
    const now = crossings();
    if (now < best) {
      best = now;
      kept = new Map([...layer].map(([c, n]) => [c, [...n]]));
    }
  }
  for (const [c, n] of kept) layer.set(c, n);
}

// 5. Sizes and places: { x, y, w, h } of every node and lane, and the map's size.
function coordinates(plan, box) {
  const { layers, columns, up, down } = plan;
  const left = (column) => PAD + column * (box.w + box.gap);
  const place = new Map();
  const height = (n) => (n.startsWith("lane:") ? LANE : box.h);
  const gapBetween = (a, b) => (a.startsWith("lane:") && b.startsWith("lane:") ? 4 : a.startsWith("lane:") || b.startsWith("lane:") ? ROW_GAP / 2 : ROW_GAP);
  const middle = (n) => place.get(n).y + place.get(n).h / 2;
  let top = PAD;
  layers.forEach((layer) => {
    // Start stacked, then let each node settle towards its neighbours.
    for (const [column, nodes] of layer) {
      let y = 0;
      for (const n of nodes) {
        place.set(n, { x: left(column), y, w: box.w, h: height(n) });
        y += height(n) + ROW_GAP;
      }
    }
    const settle = (column, side) => {
      const nodes = layer.get(column);
      if (!nodes) return;
      // Each node as near its neighbours as it can be, in order: the column's first box
      // keeps its line (so a chain stays straight), lanes above it go up, the rest down.
      const want = nodes.map((n) => {
        const near = (side.get(n) || []).filter((m) => m !== GATEWAY && place.has(m));
        return near.length ? near.reduce((s, m) => s + middle(m), 0) / near.length - height(n) / 2 : place.get(n).y;
      });
      const anchor = Math.max(0, nodes.findIndex((n) => !n.startsWith("lane:")));
      place.get(nodes[anchor]).y = want[anchor];
      for (let i = anchor - 1; i >= 0; i--) {
        const below = place.get(nodes[i + 1]).y - gapBetween(nodes[i], nodes[i + 1]) - height(nodes[i]);
        place.get(nodes[i]).y = Math.min(want[i], below);
      }
      for (let i = anchor + 1; i < nodes.length; i++) {
        const above = place.get(nodes[i - 1]).y + height(nodes[i - 1]) + gapBetween(nodes[i - 1], nodes[i]);
        place.get(nodes[i]).y = Math.max(want[i], above);
      }
    };
    for (let round = 0; round < 6; round++) {
      for (let c = columns - 2; c >= 0; c--) settle(c, down);
      for (let c = 1; c < columns; c++) settle(c, up);
    }
    // Each band below the one before.
    const members = [...layer.values()].flat();
    const highest = Math.min(...members.map((n) => place.get(n).y));
    const lowest = Math.max(...members.map((n) => place.get(n).y + place.get(n).h));
    for (const n of members) place.get(n).y += top - highest;
    top += lowest - highest + BAND_GAP;
  });
  const bottom = Math.max(PAD, ...[...place.values()].map((p) => p.y + p.h));
  return { place, width: left(columns - 1) + box.w + PAD, height: bottom + PAD };
}

// The width of a box and of the gap between columns for the space there is.
function sizes(columns, room) {
  const inner = room - 2 * PAD;
  const w = Math.max(BOX_MIN_W, Math.min(BOX_MAX_W, Math.floor((inner - (columns - 1) * GAP_MIN) / columns)));
  const gap = columns > 1 ? Math.max(GAP_MIN, Math.min(3 * GAP_MIN, Math.floor((inner - columns * w) / (columns - 1)))) : 0;
  return { w, gap };
}

// ---- drawing ----

function render(view) {
  if (!view || !Array.isArray(view.services)) return;
  state.view = view;
  const map = $("system-map");
  const plan = structure(view);
  const room = map.parentElement.clientWidth || 1200;
  const box = sizes(plan.columns, room);
  const seen = new Set();
  for (const s of view.services) {
    const key = "service:" + s.name;
    seen.add(key);
    const healthy = s.instances.filter((i) => i.status === "up").length;
    drawBox(key, box.w, {
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
    drawBox(key, box.w, {
      kind: "queue",
      title,
      badge: `depth ${q.depth ?? "?"} · ${q.consumers ?? "?"} consumer${q.consumers === 1 ? "" : "s"}`,
      status: q.dead_letters ? "bad" : "ok",
      caption: title === q.group ? `Messages: ${q.routing_keys.join(", ")}` : `Group “${q.group}”: messages wait here for ${q.consumed_by.join(", ")}`,
      extra: q.dead_letters ? `${q.dead_letters} dead letter${q.dead_letters === 1 ? "" : "s"}` : `${q.in_flight ?? 0} in flight`,
      onclick: () => select("queue", q.group),
    });
  }
  for (const [key, b] of state.boxes) {
    if (!seen.has(key)) {
      b.node.remove();
      state.boxes.delete(key);
    }
  }
  // Every box as tall as the tallest one's content, so the lines stay lines.
  for (const b of state.boxes.values()) b.node.style.height = "";
  box.h = Math.max(96, ...[...state.boxes.values()].map((b) => b.node.offsetHeight));
  const { place, width, height } = coordinates(plan, box);
  for (const [key, b] of state.boxes) {
    const p = place.get(key);
    if (!p) continue;
    Object.assign(b, p);
    b.node.style.left = p.x + "px";
    b.node.style.top = p.y + "px";
    b.node.style.height = p.h + "px";
  }
  map.style.width = width + "px";
  map.style.height = height + "px";
  const arrows = $("system-arrows");
  arrows.setAttribute("viewBox", `0 0 ${width} ${height}`);
  arrows.setAttribute("width", width);
  arrows.setAttribute("height", height);
  drawArrows(view, plan, place, box);
  setText($("system-bus"), `Bus: ${view.bus.backend} (${view.bus.state})${view.bus.detail ? " — " + view.bus.detail : ""}`);
  $("system-bus").dataset.state = view.bus.state;
  if (state.selected) showDetails();
}

function drawBox(key, width, spec) {
  let box = state.boxes.get(key);
  if (!box) {
    const node = el(
      "button",
      { type: "button", class: `box ${spec.kind}`, "data-key": key, onclick: spec.onclick },
      el("span", { class: "box-title" }),
      el("span", { class: "box-row" }, el("span", { class: "box-badge" }), el("span", { class: "box-health" })),
      el("span", { class: "box-caption" }),
      el("span", { class: "box-extra" }),
    );
    $("system-map").append(node);
    box = { node };
    state.boxes.set(key, box);
  }
  const node = box.node;
  node.style.width = width + "px";
  node.dataset.status = spec.status;
  node.setAttribute("aria-label", `${spec.kind} ${spec.title}: ${spec.badge}. ${spec.caption}`);
  breakable(node.querySelector(".box-title"), spec.title);
  setText(node.querySelector(".box-badge"), spec.badge);
  breakable(node.querySelector(".box-caption"), spec.caption);
  setText(node.querySelector(".box-extra"), spec.extra || "");
  const health = node.querySelector(".box-health");
  health.replaceChildren(...(spec.health || []).map((h) => el("i", { class: "pip " + h, title: h })));
}

// Text that may break after a dot: a long routing key ("blog.CommentModerated") wraps
// between its words, not in the middle of one.
function breakable(node, text) {
  if (node.textContent === text) return;
  // After a dot, and between the words of a CamelCase name (blog.Comment·Moderated).
  const parts = text.split(/(?<=\.)(?=\w)|(?<=[a-z])(?=[A-Z])/);
  node.replaceChildren(...parts.flatMap((part, i) => (i ? [el("wbr"), part] : [part])));
}

// A curve through the points, level where it leaves and reaches each one.
function curve(points) {
  let d = `M ${points[0].x} ${points[0].y}`;
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1];
    const b = points[i];
    const mid = (a.x + b.x) / 2;
    d += a.y === b.y ? ` L ${b.x} ${b.y}` : ` C ${mid} ${a.y}, ${mid} ${b.y}, ${b.x} ${b.y}`;
  }
  return d;
}

// The arrow of an edge: out of the right side of its source, through its lanes, into the
// left side of its target; a back edge the other way round, a little lower.
function route(from, to, plan, place) {
  const backwards = plan.back.has(from + ">" + to);
  const chain = plan.chains.get(from + ">" + to); // (a back edge's runs from its target)
  if (!chain) return null;
  const a = place.get(from);
  const b = place.get(to);
  const drop = backwards ? 10 : 0;
  const lanes = chain.slice(1, -1).map((n) => place.get(n));
  if (backwards) lanes.reverse();
  const points = [backwards ? { x: a.x, y: a.y + a.h / 2 + drop } : { x: a.x + a.w, y: a.y + a.h / 2 }];
  for (const lane of lanes) {
    const y = lane.y + lane.h / 2;
    if (backwards) points.push({ x: lane.x + lane.w, y }, { x: lane.x, y });
    else points.push({ x: lane.x, y }, { x: lane.x + lane.w, y });
  }
  points.push(backwards ? { x: b.x + b.w, y: b.y + b.h / 2 + drop } : { x: b.x, y: b.y + b.h / 2 });
  return { d: curve(points), back: backwards };
}

// For a message between two boxes no arrow joins (yet): straight from one to the other.
function path(from, to) {
  const known = state.paths.get(from + ">" + to);
  if (known) return { d: known };
  const a = state.boxes.get(from);
  const b = state.boxes.get(to);
  if (!a || !b || a.x === undefined || b.x === undefined) return null;
  return { d: curve([{ x: a.x + a.w, y: a.y + a.h / 2 }, { x: b.x, y: b.y + b.h / 2 }]) };
}

const SVG = "http://www.w3.org/2000/svg";

function drawArrows(view, plan, place) {
  const svg = $("system-arrows");
  const keep = svg.querySelector("defs");
  svg.replaceChildren(keep);
  state.paths.clear();
  for (const [from, to] of graph(view).edges) {
    const p = route(from, to, plan, place);
    if (!p) continue;
    state.paths.set(from + ">" + to, p.d);
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
    for (const consumer of q?.consumed_by || []) {
      flash("service:" + consumer, kind);
      // What the consumer made of it goes on to the services that read from it (the
      // event log to the query service).
      if (m.outcome === "handled") {
        for (const s of state.view?.services || []) {
          if ((s.reads_from || []).includes(consumer)) fly("service:" + consumer, "service:" + s.name, m);
        }
      }
    }
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
    "data-edge": from + ">" + to,
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
      ...(s.reads_from?.length
        ? [el("h4", { text: "Reads from" }), el("p", { text: `${s.reads_from.join(", ")}, over HTTP: it follows the event log (GET /events?wait=) rather than a queue.` })]
        : []),
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
