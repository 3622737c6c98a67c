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

const DURATION_UNITS = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];

/** Seconds as people say them, in at most two units: 0.5 s, 45 s, 5 min, 3 h 12 min, 2 d 4 h. */
export function duration(s) {
  if (s == null) return "–";
  if (s < 10) return `${Number(s.toFixed(1))} s`;
  let rest = Math.round(s);
  const parts = DURATION_UNITS.map(([unit, size]) => {
    const n = Math.floor(rest / size);
    rest -= n * size;
    return [n, unit];
  });
  const first = parts.findIndex(([n]) => n > 0);
  return parts.slice(first, first + 2).filter(([n]) => n > 0).map(([n, unit]) => `${n} ${unit}`).join(" ");
}

const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** A byte count in binary units, with one decimal below ten: 512 B, 340 KiB, 1.2 GiB. */
export function bytes(n) {
  if (n == null) return "–";
  let i = 0;
  for (; n >= 1024 && i < BYTE_UNITS.length - 1; i++) n /= 1024;
  return `${Number(n.toFixed(i && n < 10 ? 1 : 0))} ${BYTE_UNITS[i]}`;
}

// Population stability index: under 0.1 stable, 0.1 to 0.25 moderate, above 0.25 significant.
export const PSI_MODERATE = 0.1;
export const PSI_SIGNIFICANT = 0.25;
export const psi = (v) => (v == null ? "–" : v.toFixed(v < 1 ? 3 : 2));
export const psiTone = (v) => (v == null ? "" : v >= PSI_SIGNIFICANT ? "bad" : v >= PSI_MODERATE ? "warn" : "");
export const psiWord = (v) => (v == null ? "unknown"
  : v >= PSI_SIGNIFICANT ? "significant" : v >= PSI_MODERATE ? "moderate" : "stable");

export const METRICS = { error_rate: "error rate", p95_latency_ms: "p95 latency", offline_devices: "offline devices",
  failed_deployments: "failed deployments", requests_per_min: "requests / min", input_drift: "input drift (PSI)",
  prediction_drift: "prediction drift (PSI)" };

const METRIC_FORMATS = { error_rate: pct, p95_latency_ms: ms, input_drift: psi, prediction_drift: psi };

export const metricValue = (metric, v) => (METRIC_FORMATS[metric] || num)(v);

export function plain(v) {
  if (v == null) return "–";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
