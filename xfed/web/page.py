"""The status page: static HTML + one script that polls /api/state and redraws (text via textContent only)."""

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>xfed status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1.2em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em} h2{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} .yes{color:#080} .no{color:#b00}
#summary span{margin-right:1.5em} svg{border:1px solid #ddd;background:#fff}
.muted{color:#888}
</style></head>
<body>
<h1>xfed federation status</h1>
<div id="summary"><span>job <b id="job-id">-</b></span><span>state <b id="job-state">-</b></span>
<span>rounds <b id="rounds-done">0</b> / <b id="rounds-total">-</b></span>
<span class="muted">updated <span id="updated">never</span></span></div>
<h2>nodes</h2><table id="nodes"></table>
<h2>jobs</h2><table id="jobs"></table>
<h2>curves (loss per round and node)</h2><svg id="chart" width="720" height="260"></svg>
<h2>per-round metrics</h2><table id="rounds"></table>
<script src="app.js"></script>
</body></html>
"""

JS = r"""
"use strict";
const params = new URLSearchParams(location.search);
const every = Math.max(250, Number(params.get("every") || 1000));
const SVGNS = "http://www.w3.org/2000/svg";

function cell(v) {
  if (v === null || v === undefined || v === "") return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(4);
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (Array.isArray(v)) return v.join(", ");
  return String(v);
}

function fill(table, cols, rows, classes) {
  table.replaceChildren();
  const head = table.insertRow();
  for (const c of cols) { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); }
  for (const r of rows) {
    const tr = table.insertRow();
    for (const c of cols) {
      const td = tr.insertCell(); td.textContent = cell(r[c]);
      if (classes && classes[c]) td.className = classes[c](r[c]);
    }
  }
}

function when(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "-"; }

function chart(rows) {
  const svg = document.getElementById("chart");
  svg.replaceChildren();
  const W = 720, H = 260, L = 50, B = 30, T = 10, R = 160;
  const series = {};
  for (const r of rows) {
    for (const key of ["train_loss", "eval_loss"]) {
      if (typeof r[key] === "number" && typeof r.round === "number") {
        const name = r.node + " " + key;
        (series[name] = series[name] || []).push([r.round, r[key]]);
      }
    }
  }
  const pts = Object.values(series).flat();
  if (!pts.length) {
    const t = document.createElementNS(SVGNS, "text"); t.setAttribute("x", 20); t.setAttribute("y", 40);
    t.textContent = "no rounds yet"; svg.appendChild(t); return;
  }
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-6);
  const X = x => L + (x - x0) / (x1 - x0) * (W - L - R), Y = y => H - B - (y - y0) / (y1 - y0) * (H - B - T);
  const axis = (x, y, text, anchor) => { const t = document.createElementNS(SVGNS, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", "11");
    t.setAttribute("text-anchor", anchor); t.textContent = text; svg.appendChild(t); };
  axis(L, H - 8, "round " + x0, "start"); axis(W - R, H - 8, "round " + x1, "end");
  axis(L - 4, T + 10, y1.toPrecision(3), "end"); axis(L - 4, H - B, y0.toPrecision(3), "end");
  const colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
  // one colour per node; validation loss dashed
  const nodes = [...new Set(rows.map(r => String(r.node)))].sort();
  const colorOf = name => colors[Math.max(0, nodes.indexOf(name.slice(0, name.lastIndexOf(" ")))) % colors.length];
  Object.keys(series).sort().forEach((name, i) => {
    const s = series[name].sort((a, b) => a[0] - b[0]);
    const line = document.createElementNS(SVGNS, "polyline");
    line.setAttribute("fill", "none"); line.setAttribute("stroke", colorOf(name));
    line.setAttribute("stroke-width", "2");
    if (name.endsWith("eval_loss")) line.setAttribute("stroke-dasharray", "5,3");
    line.setAttribute("points", s.map(p => X(p[0]) + "," + Y(p[1])).join(" "));
    line.setAttribute("class", "series"); line.setAttribute("data-name", name);
    svg.appendChild(line);
    axis(W - R + 8, T + 14 * (i + 1), name, "start");
    svg.lastChild.setAttribute("fill", colorOf(name));
  });
}

async function refresh() {
  try {
    const q = params.get("job") ? "?job=" + encodeURIComponent(params.get("job")) : "";
    const res = await fetch("api/state" + q, {cache: "no-store"});
    if (!res.ok) throw new Error("HTTP " + res.status);
    const s = await res.json();
    const alive = {alive: v => (v ? "yes" : "no")};
    fill(document.getElementById("nodes"), ["node", "role", "alive", "host", "pid", "job"], s.nodes, alive);
    fill(document.getElementById("jobs"), ["job", "state", "stage", "attempt", "participants", "started", "ended", "reason"],
         s.jobs.map(j => Object.assign({}, j, {started: when(j.started), ended: when(j.ended)})));
    document.getElementById("job-id").textContent = s.job ? s.job.job : "-";
    document.getElementById("job-state").textContent = s.job ? s.job.state : "-";
    document.getElementById("rounds-done").textContent = String(s.rounds_done || 0);
    document.getElementById("rounds-total").textContent = cell(s.rounds_total);
    const cols = ["round", "node"];
    for (const r of s.rounds) for (const k of Object.keys(r)) if (!cols.includes(k) && k !== "rounds") cols.push(k);
    const rows = s.rounds.slice().sort((a, b) => (a.round - b.round) || String(a.node).localeCompare(String(b.node)));
    fill(document.getElementById("rounds"), cols, rows);
    chart(s.rounds);
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  } catch (e) {
    document.getElementById("updated").textContent = "error: " + e.message;
  }
  setTimeout(refresh, every);
}
refresh();
"""
