"use strict";
// The agent's status page: fetch ./status, render with textContent only, rates from two reads.
const REFRESH_MS = __REFRESH_MS__, HISTORY = __HISTORY__;
const $ = (id) => document.getElementById(id);
const history = { rx: [], fw: [], dr: [], pods: new Map() };
let previous = null;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
const num = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "-");
const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);
function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : Math.round(n)) + " " + units[i];
}
function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${Math.floor(s % 60)}s`;
}
// A number cell: data-k is the JSON path of the /status field it shows (tests compare them).
function field(tag, path, value) { return el(tag, { "data-k": JSON.stringify(path) }, num(value)); }
function total(tag, path, value) { return el(tag, { "data-sum": JSON.stringify(path) }, num(value)); }

function push(list, value) { list.push(value); if (list.length > HISTORY) list.shift(); }
function spark(svg, values) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const box = svg.viewBox.baseVal, max = Math.max(1, ...values);
  const step = values.length > 1 ? box.width / (HISTORY - 1) : 0, x0 = box.width - step * (values.length - 1);
  const points = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(box.height - 1 - v / max * (box.height - 2)).toFixed(1)}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
  svg.setAttribute("aria-label", `max ${max.toFixed(1)}/s`);
}
function newSpark() {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 120 22"); svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "spark");
  return svg;
}

function rates(st, now) {
  const out = { rx: 0, fw: 0, dr: 0, rxb: 0, fwb: 0, pods: {} };
  if (!previous) return out;
  const dt = (now - previous.at) / 1000, p = previous.st;
  if (dt <= 0) return out;
  const r = (a, b) => Math.max(0, (a - b) / dt);
  out.rx = r(st.received, p.received); out.fw = r(st.forwarded, p.forwarded);
  out.dr = r(sum(st.drops), sum(p.drops));
  out.rxb = r(st.received_bytes, p.received_bytes); out.fwb = r(st.forwarded_bytes, p.forwarded_bytes);
  for (const [key, c] of Object.entries(st.pods || {})) {
    const q = (p.pods || {})[key];
    out.pods[key] = q ? { pkts: r(c.received, q.received), bytes: r(c.received_bytes, q.received_bytes) }
                      : { pkts: 0, bytes: 0 };
  }
  return out;
}

function renderPods(st, rate) {
  const body = $("pods").tBodies[0], silent = new Set(st.silent || []);
  const keys = Object.keys(st.pods || {}).sort();
  while (body.firstChild) body.removeChild(body.firstChild);
  for (const key of keys) {
    const c = st.pods[key], r = rate.pods[key] || { pkts: 0, bytes: 0 };
    const tr = el("tr", { "data-pod": key });
    tr.append(el("td", {}, key), el("td", {}, c.mode || "-"),
              field("td", ["pods", key, "received"], c.received),
              field("td", ["pods", key, "forwarded"], c.forwarded),
              total("td", ["pods", key, "drops"], sum(c.drops)),
              el("td", {}, r.pkts.toFixed(1)), el("td", {}, bytes(r.bytes) + "/s"));
    let h = history.pods.get(key);
    if (!h) { h = []; history.pods.set(key, h); }
    push(h, r.pkts);
    const cell = el("td"), svg = newSpark();
    cell.appendChild(svg); tr.appendChild(cell); spark(svg, h);
    const quiet = silent.has(key) || c.silent;
    tr.appendChild(el("td", { class: quiet ? "bad" : "" }, quiet ? "silent" : "ok"));
    body.appendChild(tr);
  }
  for (const key of [...history.pods.keys()]) if (!(key in (st.pods || {}))) history.pods.delete(key);
  if (!keys.length) body.appendChild(el("tr", {}, "no monitored pods yet"));
}

function renderTable(table, rows) {
  while (table.firstChild) table.removeChild(table.firstChild);
  for (const [label, cell] of rows) {
    const tr = el("tr"); tr.append(el("th", {}, label), cell); table.appendChild(tr);
  }
  if (!rows.length) table.appendChild(el("tr", {}, "none"));
}

function scalarRows(obj, path) {
  const rows = [];
  for (const [k, v] of Object.entries(obj || {})) {
    if (typeof v === "number") rows.push([k, field("td", [...path, k], v)]);
    else if (typeof v === "string" || typeof v === "boolean") rows.push([k, el("td", {}, v === "" ? "-" : String(v))]);
    else if (k === "dropped" && v && typeof v === "object") {  // an output's {OutputDrop reason: packets}
      for (const [reason, n] of Object.entries(v)) rows.push([`dropped ${reason}`, field("td", [...path, k, reason], n)]);
    }
  }
  return rows;
}

function renderOutputs(outputs) {
  const box = $("outputs");
  while (box.firstChild) box.removeChild(box.firstChild);
  for (const [name, state] of Object.entries(outputs || {})) {
    const div = el("div", { class: "output" }), table = el("table", { class: "kv" });
    div.append(el("h3", {}, name), table);
    renderTable(table, scalarRows(state, ["outputs", name]));
    (Array.isArray(state.sensors) ? state.sensors : []).forEach((sensor, i) => {
      const t = el("table", { class: "kv" });
      div.append(el("h3", {}, "sensor " + (sensor.address || sensor.host || i)), t);
      renderTable(t, scalarRows(sensor, ["outputs", name, "sensors", i]));
    });
    box.appendChild(div);
  }
  if (!box.firstChild) box.appendChild(el("p", { class: "warn" }, "no output configured"));
}

function render(st, now) {
  const rate = rates(st, now);
  $("where").textContent = st.listen ? "· tunnels " + st.listen : "";
  const ready = $("ready");
  ready.textContent = st.ready ? "ready" : "not ready";
  ready.className = "badge " + (st.ready ? "ok" : "bad");
  $("uptime").textContent = duration(st.uptime || 0);
  $("updated").textContent = new Date(now).toLocaleTimeString();
  for (const node of document.querySelectorAll("[data-k]:not(td)")) {
    const value = JSON.parse(node.getAttribute("data-k")).reduce((o, k) => (o == null ? o : o[k]), st);
    node.textContent = num(value);
  }
  $("dropped-total").textContent = num(sum(st.drops));
  $("dropped-total").setAttribute("data-sum", JSON.stringify(["drops"]));
  $("rate-rx").textContent = rate.rx.toFixed(1); $("rate-fw").textContent = rate.fw.toFixed(1);
  $("rate-rxb").textContent = bytes(rate.rxb) + "/s"; $("rate-fwb").textContent = bytes(rate.fwb) + "/s";
  push(history.rx, rate.rx); push(history.fw, rate.fw); push(history.dr, rate.dr);
  spark($("chart-rx"), history.rx); spark($("chart-fw"), history.fw); spark($("chart-dr"), history.dr);
  const received = st.received_bytes || 0;
  renderTable($("saved"), Object.entries(st.saved_bytes || {}).map(([m, n]) => {
    const td = field("td", ["saved_bytes", m], n);
    td.title = bytes(n) + (received ? ` (${(100 * n / received).toFixed(1)}% of bytes received)` : "");
    return [m, td];
  }));
  const drops = Object.entries(st.drops || {}).filter(([, n]) => n).sort((a, b) => b[1] - a[1]);
  renderTable($("drops"), drops.map(([reason, n]) => [reason, field("td", ["drops", reason], n)]));
  renderPods(st, rate);
  renderOutputs(st.outputs);
  const silent = $("silent");
  while (silent.firstChild) silent.removeChild(silent.firstChild);
  for (const key of st.silent || []) silent.appendChild(el("li", { class: "bad" }, key));
  if (!silent.firstChild) silent.appendChild(el("li", {}, st.silent ? "none" : "not tracked (no Kubernetes pod table)"));
  for (const node of document.querySelectorAll("[data-t]")) {
    const value = node.getAttribute("data-t").split(".").reduce((o, k) => (o == null ? o : o[k]), st);
    node.textContent = value || "none";
  }
  renderTable($("kube"), st.kube ? scalarRows(st.kube, ["kube"]) : [["source", el("td", {}, "static --sender list")]]);
}

async function refresh() {
  try {
    const response = await fetch("status", { cache: "no-store" });
    if (!response.ok) throw new Error("/status answered " + response.status);
    const st = await response.json(), now = Date.now();
    render(st, now);
    previous = { st, at: now };
    $("error").textContent = "";
    document.body.setAttribute("data-rendered", String((+document.body.getAttribute("data-rendered") || 0) + 1));
  } catch (err) {
    $("error").textContent = "cannot read status: " + err.message;
    $("ready").textContent = "unreachable"; $("ready").className = "badge bad";
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
