// modelmux dashboard: polls the instance's JSON views (no build step, no dependencies).
"use strict";

const params = new URLSearchParams(location.search);
const INTERVAL_MS = Math.max(250, Number(params.get("interval_ms")) || 1000);
const PAGE = 50;
const STATES = ["LOADED", "LOADING", "LOADING_FAILED", "NOT_LOADED"];
const ui = { q: "", state: "", offset: 0, total: 0, seq: 0 };

function $(id) { return document.getElementById(id); }
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; n = Number(n) || 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
function ago(t) {
  if (!t) return "-";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return `${s.toFixed(0)}s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)}m ago`;
  return `${(s / 3600).toFixed(1)}h ago`;
}
function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }
// An instance started with --auth-file asks for a bearer token: it is typed into the page, kept in
// sessionStorage (this tab only, gone when it closes) and sent as a header, never in the URL.
const TOKEN_KEY = "modelmux.token";
function authHeaders() {
  const t = sessionStorage.getItem(TOKEN_KEY);
  return t ? { authorization: `Bearer ${t}` } : {};
}
function askToken(status) {
  const box = $("auth");
  box.hidden = false;
  $("auth-msg").textContent = status === 401 ? "this mesh needs a token" : "this token may not read the dashboard";
}
async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store", headers: authHeaders() });
  if (r.status === 401 || r.status === 403) askToken(r.status);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}
document.addEventListener("DOMContentLoaded", () => {
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("auth-token").value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    $("auth-token").value = "";
    $("auth").hidden = true;
  });
});

function chart(svg, points, { max = null, fmt = (v) => v.toFixed(1) } = {}) {
  const W = 600, H = 140, P = 16;
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const vals = points.map((p) => p[1]).filter((v) => v !== null);
  const top = max !== null ? max : Math.max(1e-9, ...vals) * 1.15;
  for (const f of [0, 0.5, 1]) {
    const y = H - P - f * (H - 2 * P);
    const g = document.createElementNS(ns, "line");
    g.setAttribute("x1", 0); g.setAttribute("x2", W); g.setAttribute("y1", y); g.setAttribute("y2", y);
    g.setAttribute("class", "grid"); svg.append(g);
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", 2); t.setAttribute("y", y - 2); t.textContent = fmt(top * f); svg.append(t);
  }
  if (points.length < 2) return;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const x = (t) => ((t - t0) / Math.max(1e-9, t1 - t0)) * W;
  const y = (v) => H - P - (Math.min(v, top) / top) * (H - 2 * P);
  const pts = points.filter((p) => p[1] !== null).map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
  if (pts.length < 2) return;
  const area = document.createElementNS(ns, "polygon");
  area.setAttribute("points", `${pts[0].split(",")[0]},${H - P} ${pts.join(" ")} ${pts[pts.length - 1].split(",")[0]},${H - P}`);
  area.setAttribute("class", "area"); svg.append(area);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts.join(" ")); line.setAttribute("class", "line"); svg.append(line);
}

function renderInstances(o) {
  const box = $("instances");
  box.replaceChildren(...o.instances.map((i) => {
    const frac = i.capacity_bytes ? i.used_bytes / i.capacity_bytes : 0;
    const bar = el("div", { class: "bar" + (frac > 0.95 ? " full" : frac > 0.8 ? " high" : "") },
      el("div", { style: `width:${Math.min(100, frac * 100).toFixed(1)}%` }));
    bar.firstChild.style.width = `${Math.min(100, frac * 100).toFixed(1)}%`;
    const chips = i.copies.map((c) => el("span", { class: `chip ${c.state}`, "data-model-id": c.model_id,
      title: `${c.state} · ${bytes(c.size_bytes)} · ${c.rpm} req/min` }, c.model_id));
    if (i.more_copies) chips.push(el("span", { class: "chip more" }, `+${i.more_copies} more`));
    return el("div", { class: "instance" + (i.instance_id === o.leader ? " leader" : ""), "data-instance-id": i.instance_id },
      el("div", { class: "head" },
        el("span", { class: "id" }, i.instance_id + (i.instance_id === o.leader ? "  ★ leader" : "")),
        el("span", { class: "sub" }, i.shutting_down ? "draining" : (i.zone || ""))),
      bar,
      el("div", { class: "sub" }, `${bytes(i.used_bytes)} / ${bytes(i.capacity_bytes)} · ${i.models} loaded · ${i.loading} loading · ${i.rpm} req/min`),
      el("div", { class: "chips" }, ...chips));
  }));
}

function renderCards(o) {
  const last = o.series.length ? o.series[o.series.length - 1] : null;
  const lastHit = o.series.map((s) => s.hit_ratio).filter((v) => v !== null).pop();
  $("c-instances").textContent = o.totals.instances;
  $("c-models").textContent = o.totals.models;
  $("c-copies").textContent = o.totals.copies_loaded;
  $("c-used").textContent = `${bytes(o.totals.used_bytes)} / ${bytes(o.totals.capacity_bytes)}`;
  $("c-rps").textContent = last ? last.rps.toFixed(1) : "-";
  $("c-hit").textContent = lastHit !== undefined ? `${(lastHit * 100).toFixed(1)}%` : "-";
  chart($("chart-rps"), o.series.map((s) => [s.t, s.rps]));
  chart($("chart-hit"), o.series.map((s) => [s.t, s.hit_ratio]), { max: 1, fmt: (v) => `${(v * 100).toFixed(0)}%` });
}

function renderFilters(states) {
  const box = $("state-filters");
  box.replaceChildren(...["", ...STATES].map((s) => {
    const n = s ? states[s] || 0 : Object.values(states).reduce((a, b) => a + b, 0);
    const b = el("button", { type: "button", class: ui.state === s ? "on" : "", "data-state": s || "ALL" },
      `${s ? s.toLowerCase().replace("_", " ") : "all"} ${n}`);
    b.onclick = () => { ui.state = s; ui.offset = 0; refreshModels(); renderFilters(states); };
    return b;
  }));
}

function renderDecisions(list) {
  $("decisions").tBodies[0].replaceChildren(...list.map((d) =>
    el("tr", { "data-decision": `${d.kind}:${d.model_id}:${d.instance_id}` },
      el("td", {}, clock(d.at)),
      el("td", { class: `kind-${d.kind}` }, d.kind),
      el("td", {}, d.model_id),
      el("td", {}, d.instance_id || "-"),
      el("td", { class: "reason" }, d.reason))));
}

async function refreshModels() {
  const q = new URLSearchParams({ q: ui.q, state: ui.state, offset: ui.offset, limit: PAGE });
  const page = await getJSON(`/api/v1/cluster/models?${q}`);
  ui.total = page.total;
  $("models").tBodies[0].replaceChildren(...page.models.map((m) =>
    el("tr", { "data-model-id": m.model_id },
      el("td", {}, m.model_id),
      el("td", { class: `state-${m.state}` }, m.state.toLowerCase().replace("_", " ")),
      el("td", {}, `${m.copies.loaded} loaded` + (m.copies.loading ? ` · ${m.copies.loading} loading` : "") + (m.copies.failed ? ` · ${m.copies.failed} failed` : "")),
      el("td", {}, m.size_bytes ? bytes(m.size_bytes) : "-"),
      el("td", {}, m.rpm),
      el("td", {}, ago(m.last_used)),
      el("td", {}, m.where.join(", ") || "-"))));
  const end = Math.min(ui.offset + PAGE, ui.total);
  $("page-info").textContent = ui.total ? `${ui.offset + 1}-${end} of ${ui.total}` : "no models";
  $("prev").disabled = ui.offset === 0;
  $("next").disabled = end >= ui.total;
}

async function tick() {
  try {
    const o = await getJSON("/api/v1/cluster/overview");
    $("served-by").textContent = o.served_by;
    $("leader").textContent = o.leader || "-";
    $("updated").textContent = clock(o.time);
    $("conn").textContent = o.connected ? "live" : "store unreachable";
    $("conn").className = "pill " + (o.connected ? "ok" : "bad");
    renderCards(o);
    renderInstances(o);
    renderFilters(o.states);
    renderDecisions(o.decisions);
    await refreshModels();
    document.body.dataset.updates = String((Number(document.body.dataset.updates) || 0) + 1);
  } catch (err) {
    $("conn").textContent = "disconnected";
    $("conn").className = "pill bad";
  } finally {
    setTimeout(tick, INTERVAL_MS);
  }
}

let searchTimer = null;
$("search").addEventListener("input", (e) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { ui.q = e.target.value; ui.offset = 0; refreshModels(); }, 200);
});
$("prev").onclick = () => { ui.offset = Math.max(0, ui.offset - PAGE); refreshModels(); };
$("next").onclick = () => { ui.offset += PAGE; refreshModels(); };
tick();
