/* Building DOM from data (text only, never innerHTML: names and messages come from devices), and
 * formatting numbers and times for people. */

export const $ = (id) => document.getElementById(id);
export const enc = encodeURIComponent;

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export const link = (href, text, attrs) => h("a", { href, ...attrs }, text);
export const deviceLink = (name) => link(`#device/${enc(name)}`, name);
export const modelLink = (name) => link(`#model/${enc(name)}`, name);
export const deploymentLink = (id, text) => link(`#deployment/${enc(id)}`, text ?? `#${id}`);
export const chip = (text, kind) => h("span", { class: `chip ${kind || text}` }, String(text).replace(/_/g, " "));
export const section = (title, ...children) => h("section", { class: "panel" }, h("h2", {}, title), ...children);
export const empty = (text) => h("p", { class: "empty" }, text);

export function table(headers, rows, emptyText) {
  if (!rows.length) return empty(emptyText);
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows)));
}

export function dl(pairs) {
  const rows = pairs.filter(([, v]) => v != null && v !== "");
  if (!rows.length) return empty("nothing reported");
  return h("dl", { class: "kv" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// --- formatting ------------------------------------------------------------------------------------

export function parseTime(iso) {
  if (iso == null) return null;
  // A timestamp without an offset is UTC (the server stores UTC); Date would read it as local time.
  const s = /(Z|[+-]\d\d:?\d\d)$/.test(iso) ? iso : `${iso}Z`;
  return new Date(s);
}

export function relative(date) {
  const s = Math.round((Date.now() - date.getTime()) / 1000);
  const a = Math.abs(s);
  const text = a < 60 ? `${a} s` : a < 3600 ? `${Math.round(a / 60)} min` : a < 86400 ? `${Math.round(a / 3600)} h`
    : `${Math.round(a / 86400)} d`;
  return s >= 0 ? `${text} ago` : `in ${text}`;
}

export function when(iso, never = "never") {
  const d = parseTime(iso);
  if (!d || isNaN(d)) return h("span", { class: "muted" }, never);
  return h("time", { datetime: d.toISOString(), title: d.toISOString() }, relative(d));
}

export const num = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
export const pct = (r) => (r == null ? "–" : `${(r * 100).toFixed(r < 0.01 && r > 0 ? 2 : 1)} %`);
export const ms = (v) => (v == null ? "–" : `${v < 10 ? v.toFixed(2) : v.toFixed(v < 100 ? 1 : 0)} ms`);
export const axisMs = (v) => `${Number(v.toPrecision(3))} ms`;
export const axisPct = (r) => `${Number((r * 100).toPrecision(3))} %`;
export const short = (id, n = 12) => (id ? h("code", { title: id }, id.length > n ? `${id.slice(0, n)}…` : id) : "–");

/** Seconds as people say them: 45 s, 5 min, 1 h, 2 d (rounded down to one unit when exact). */
export function duration(s) {
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60]]) {
    if (s >= size && s % size === 0) return `${s / size} ${unit}`;
  }
  return `${num(s)} s`;
}

export function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export const METRICS = { error_rate: "error rate", p95_latency_ms: "p95 latency", offline_devices: "offline devices",
  failed_deployments: "failed deployments", requests_per_min: "requests / min" };

export function metricValue(metric, v) {
  if (metric === "error_rate") return pct(v);
  if (metric === "p95_latency_ms") return ms(v);
  return num(v);
}

export function plain(v) {
  if (v == null) return "–";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
