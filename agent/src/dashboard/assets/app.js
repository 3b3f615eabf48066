// Tollgate's dashboard: reads /admin/dashboard/* with the admin token and draws plain DOM and
// SVG. No framework and nothing fetched from elsewhere: the binary serves every byte.
"use strict";

const TOKEN_KEY = "tollgate-admin-token";
const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2",
  "#db2777", "#65a30d", "#ea580c", "#4f46e5", "#9ca3af"];
const SVG_NS = "http://www.w3.org/2000/svg"; // a namespace name, never fetched

const state = { range: "30d", by: "team", spend: null, pending: 0, live: null };

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = tag === "svg" || ["rect", "path", "line", "text", "title", "g", "polyline"].includes(tag)
    ? document.createElementNS(SVG_NS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

const usd = (v) => v >= 100 ? `$${v.toFixed(0)}` : v >= 1 ? `$${v.toFixed(2)}` : `$${v.toFixed(4)}`;
const count = (n) => Number(n).toLocaleString("en-US");
const when = (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 16);

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const r = await fetch(path, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  if (r.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("The admin token was refused.");
    throw new Error("unauthorized");
  }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : `HTTP ${r.status}`);
  return body;
}

function showLogin(message) {
  $("#main").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

function showMain() {
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#logout").hidden = false;
  load();
}

function setActive(nav, attr, value) {
  for (const b of document.querySelectorAll(`${nav} button`)) {
    b.classList.toggle("active", b.dataset[attr] === value);
  }
}

// Loads every panel for the current range; body[data-loaded] says when all have answered.
function load() {
  setActive("#ranges", "range", state.range);
  setActive("#dims", "by", state.by);
  document.body.dataset.loaded = "";
  const range = encodeURIComponent(state.range);
  const jobs = [
    api(`/admin/dashboard/spend?range=${range}`).then((d) => { state.spend = d; drawSpend(); }),
    api("/admin/dashboard/budgets").then(drawBudgets),
    api(`/admin/dashboard/findings?range=${range}`).then(drawFindings),
    api("/admin/dashboard/audit?limit=50").then(drawAudit),
    api("/admin/dashboard/live").then(drawLive),
  ];
  Promise.allSettled(jobs).then((results) => {
    const failed = results.filter((r) => r.status === "rejected");
    $("#period").textContent = failed.length
      ? `Could not load: ${failed.map((f) => f.reason.message).join("; ")}`
      : state.spend ? `${state.spend.from.slice(0, 16).replace("T", " ")} to ${state.spend.to.slice(0, 16).replace("T", " ")} UTC` : "";
    document.body.dataset.loaded = failed.length ? "error" : state.range;
  });
}

function drawSpend() {
  const d = state.spend;
  $("#total-cost").textContent = usd(d.totals.cost_usd);
  $("#total-cost").dataset.usd = d.totals.cost_usd;
  $("#total-requests").textContent = count(d.totals.requests);
  $("#total-tokens").textContent = count(d.totals.input_tokens + d.totals.output_tokens);
  $("#total-errors").textContent = count(d.totals.errors);
  const groups = d.by[state.by];
  drawStack($("#spend-chart"), d.buckets, d.bucket_ms, groups);
  const body = $("#spend-table tbody");
  body.replaceChildren();
  groups.forEach((g, i) => {
    const swatch = el("span");
    swatch.style.background = PALETTE[i % PALETTE.length];
    body.append(el("tr", { "data-name": g.name },
      el("td", { class: "swatch" }, swatch),
      el("td", { class: "name" }, g.name),
      el("td", { class: "num requests" }, count(g.requests)),
      el("td", { class: "num tokens" }, count(g.tokens)),
      el("td", { class: "num errors" }, count(g.errors)),
      el("td", { class: "num cost", "data-usd": g.cost_usd }, usd(g.cost_usd))));
  });
  if (!groups.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No requests in this period.")));
  const keys = $("#top-keys tbody");
  keys.replaceChildren(...d.by.key.map((k) => el("tr", { "data-name": k.name },
    el("td", {}, el("code", {}, k.name)), el("td", { class: "num" }, count(k.requests)),
    el("td", { class: "num" }, count(k.tokens)), el("td", { class: "num cost", "data-usd": k.cost_usd }, usd(k.cost_usd)))));
  $("#sessions-period").textContent = `since ${d.sessions_from.slice(0, 10)}`;
  const sessions = $("#top-sessions tbody");
  sessions.replaceChildren(...d.top_sessions.map((s) => el("tr", { "data-name": s.session },
    el("td", {}, el("code", {}, s.session)), el("td", {}, s.team || "(none)"),
    el("td", { class: "num" }, count(s.requests)), el("td", { class: "num" }, count(s.tokens)),
    el("td", { class: "num cost", "data-usd": s.cost_usd }, usd(s.cost_usd)))));
  if (!d.top_sessions.length) sessions.append(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No sessions named in this period.")));
}

// Stacked bars: one per bucket, one colour per group.
function drawStack(svg, buckets, bucketMs, groups) {
  svg.replaceChildren();
  const w = svg.clientWidth || 800, h = svg.clientHeight || 220, pad = { l: 56, r: 8, t: 8, b: 22 };
  const totals = buckets.map((_, i) => groups.reduce((s, g) => s + g.series[i], 0));
  const max = Math.max(...totals, 1e-9);
  const slot = (w - pad.l - pad.r) / Math.max(buckets.length, 1);
  const bw = Math.min(slot, 48);
  const y = (v) => pad.t + (h - pad.t - pad.b) * (1 - v / max);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.append(el("line", { x1: pad.l, x2: w - pad.r, y1: y(0), y2: y(0), stroke: "#dfe3ea" }));
  svg.append(el("text", { x: pad.l - 6, y: y(max) + 10, "text-anchor": "end", "font-size": 11, fill: "#687385" }, usd(max)));
  svg.append(el("text", { x: pad.l - 6, y: y(0), "text-anchor": "end", "font-size": 11, fill: "#687385" }, "$0"));
  buckets.forEach((b, i) => {
    let acc = 0;
    groups.forEach((g, gi) => {
      const v = g.series[i];
      if (v <= 0) return;
      const top = y(acc + v), bottom = y(acc);
      acc += v;
      svg.append(el("rect", {
        x: pad.l + i * slot + (slot - bw) / 2 + 1, y: top, width: Math.max(bw - 2, 1), height: Math.max(bottom - top, 0.5),
        fill: PALETTE[gi % PALETTE.length],
      }, el("title", {}, `${g.name}, ${when(b)}: ${usd(v)}`)));
    });
  });
  if (buckets.length) {
    const label = (ms) => bucketMs < 86400000 ? when(ms).slice(5) : when(ms).slice(0, 10);
    svg.append(el("text", { x: pad.l, y: h - 6, "font-size": 11, fill: "#687385" }, label(buckets[0])));
    svg.append(el("text", { x: w - pad.r, y: h - 6, "text-anchor": "end", "font-size": 11, fill: "#687385" },
      label(buckets[buckets.length - 1])));
  }
}

function drawBudgets(d) {
  const box = $("#budgets");
  box.replaceChildren();
  if (!d.budgets.length) {
    box.append(el("p", { class: "empty" }, "No budgets configured."));
    return;
  }
  for (const b of d.budgets) {
    // Dollars where the budget has a USD limit, else tokens.
    const money = b.limit_usd !== null;
    const used = money ? b.used_usd : b.used_tokens;
    const limit = money ? b.limit_usd : b.limit_tokens;
    const forecast = money ? b.forecast_usd : b.forecast_tokens;
    const fmt = money ? usd : (v) => `${count(Math.round(v))} tokens`;
    const share = limit ? used / limit : 0;
    const row = el("div", {
      class: `budget${forecast > limit ? " over" : share > 0.8 ? " warn" : ""}`,
      "data-name": b.name, "data-used": used, "data-limit": limit, "data-forecast": forecast,
    });
    const bar = el("div", { class: "bar" });
    const fill = el("div", { class: "fill" });
    fill.style.width = `${Math.min(share, 1) * 100}%`;
    const mark = el("div", { class: "forecast", title: "Forecast at the window's end" });
    mark.style.left = `${Math.min(limit ? forecast / limit : 0, 1) * 100}%`;
    bar.append(fill, mark);
    row.append(
      el("div", {}, el("strong", {}, b.name), " ", el("span", { class: "note" }, `until ${b.window_end.slice(0, 16)} UTC`)),
      bar,
      el("div", { class: "note" }, `${fmt(used)} of ${fmt(limit)} used (${(share * 100).toFixed(1)}%); `
        + `forecast ${fmt(forecast)} by the window's end`));
    box.append(row);
  }
}

function drawFindings(d) {
  $("#findings-period").textContent = `${d.from.slice(0, 10)} to ${d.to.slice(0, 10)}`;
  const body = $("#findings tbody");
  body.replaceChildren(...d.findings.map((f) => el("tr", { "data-kind": f.kind },
    el("td", {}, f.kind), el("td", {}, f.subject), el("td", {}, f.detail),
    el("td", { class: "num" }, count(f.requests)),
    el("td", {}, ...f.examples.map((x) => el("code", {}, `${x} `))))));
  if (!d.findings.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "Nothing found.")));
}

function drawAudit(d) {
  const body = $("#audit tbody");
  body.replaceChildren(...d.entries.map((e) => el("tr", { "data-action": e.action },
    el("td", {}, when(e.ts_ms)), el("td", {}, e.actor), el("td", {}, e.action), el("td", {}, e.subject),
    el("td", {}, el("code", {}, JSON.stringify(e.detail))))));
  if (!d.entries.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No audit entries.")));
}

function drawLive(d) {
  state.live = d;
  const last = d.buckets.slice(-6);
  const n = last.reduce((s, b) => s + b.requests, 0);
  $("#live-rps").textContent = (n / (last.length * d.bucket_ms / 1000 || 1)).toFixed(2);
  const withTtft = last.filter((b) => b.ttft_ms !== null);
  $("#live-ttft").textContent = withTtft.length
    ? `${(withTtft.reduce((s, b) => s + b.ttft_ms * b.requests, 0) / withTtft.reduce((s, b) => s + b.requests, 0)).toFixed(1)} ms`
    : "none";
  spark($("#live-rps-chart"), d.buckets.map((b) => b.rps));
  spark($("#live-ttft-chart"), d.buckets.map((b) => b.ttft_ms || 0));
}

function spark(svg, values) {
  svg.replaceChildren();
  const w = svg.clientWidth || 300, h = svg.clientHeight || 60, max = Math.max(...values, 1e-9);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const pts = values.map((v, i) => `${(i / Math.max(values.length - 1, 1)) * w},${h - 2 - (v / max) * (h - 4)}`);
  svg.append(el("polyline", { points: pts.join(" "), fill: "none", stroke: "#2563eb", "stroke-width": 1.5 }));
}

function refreshLive() {
  if (!$("#main").hidden && document.visibilityState === "visible") {
    api("/admin/dashboard/live").then(drawLive).catch(() => {});
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("#ranges button")) {
    b.addEventListener("click", () => { state.range = b.dataset.range; load(); });
  }
  for (const b of document.querySelectorAll("#dims button")) {
    b.addEventListener("click", () => { state.by = b.dataset.by; setActive("#dims", "by", state.by); if (state.spend) drawSpend(); });
  }
  $("#login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value);
    $("#token").value = "";
    showMain();
  });
  $("#logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showLogin(); });
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("range");
  if (fromHash) state.range = fromHash;
  if (sessionStorage.getItem(TOKEN_KEY)) showMain(); else showLogin();
  setInterval(refreshLive, 5000);
});
