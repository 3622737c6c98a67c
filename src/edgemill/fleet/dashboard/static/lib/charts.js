/* Time charts with the vendored uPlot (a global from static/vendor/uPlot.iife.min.js). A view asks for a
 * chart with chart(ctx, ...) while it builds its node; drawCharts draws them once the node is on the
 * page, each sized to its box and resized with it. */

/* global uPlot */
import { axisMs, axisPct, empty, h, ms, num, pct } from "./dom.js";

const SINCE_S = 3600;
const BUCKETS = 60;  // one point a minute: the traffic charts read requests per minute
export const WINDOW = `since_s=${SINCE_S}&buckets=${BUCKETS}`;

const live = [];  // {u, ro} of the charts on the page

const PALETTE = ["--c1", "--c2", "--c3", "--c4", "--c5", "--c6"];

/** A time chart: x in unix seconds, lines [{label, values, scale, fmt, color?, fill?}] on one or two
 * y scales (the second drawn on the right). Shows "no data yet" when no line has a value. */
export function chart(ctx, title, x, lines, height = 200) {
  const box = h("figure", { class: "chart" }, h("figcaption", {}, title));
  const hasData = x.length > 0 && lines.some((l) => l.values.some((v) => v != null));
  if (!hasData) {
    box.append(h("div", { class: "no-data", style: `height:${height}px` }, "no data yet"));
    return box;
  }
  const plot = h("div", { class: "plot" });
  // The canvas says nothing to a screen reader: the latest values do.
  const latest = lines.map((l) => {
    const last = [...l.values].reverse().find((v) => v != null);
    return `${l.label} ${last == null ? "none" : l.fmt(last)}`;
  });
  box.append(plot, h("p", { class: "sr-only" }, `Latest: ${latest.join("; ")}.`));
  ctx.charts.push({ el: plot, x, lines, height });
  return box;
}

function drawChart({ el, x, lines, height }) {
  const css = getComputedStyle(document.documentElement);
  const v = (name) => css.getPropertyValue(name).trim();
  const scales = [...new Set(lines.map((l) => l.scale))];
  const fmtOf = (scale) => {
    const l = lines.find((line) => line.scale === scale);
    return l.axisFmt || l.fmt;
  };
  // Room for the longest tick label (uPlot's axis font is 12px; about 7px a character).
  const size = (u, values) => 18 + 7 * Math.max(3, ...(values || []).map((t) => String(t).length));
  const axis = { stroke: v("--muted"), grid: { stroke: v("--grid"), width: 1 }, ticks: { stroke: v("--grid"), width: 1 } };
  const opts = {
    width: Math.max(el.clientWidth, 200),
    height,
    cursor: { drag: { x: false, y: false } },
    scales: Object.fromEntries(scales.map((s) => [s, { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] }])),
    series: [{ label: "time" }, ...lines.map((l, i) => {
      const color = l.color ? v(l.color) : v(PALETTE[i % PALETTE.length]);
      return {
        label: l.label, scale: l.scale, stroke: color, width: 2, spanGaps: true,
        fill: l.fill ? `${color}22` : undefined,
        points: { show: x.length < 4, size: 5 },
        value: (u, val) => (val == null ? "–" : l.fmt(val)),
      };
    })],
    axes: [
      { ...axis, space: 80 },
      { ...axis, scale: scales[0], size, values: (u, ticks) => ticks.map((t) => fmtOf(scales[0])(t)) },
      ...(scales[1] ? [{ ...axis, scale: scales[1], side: 1, size, grid: { show: false },
        values: (u, ticks) => ticks.map((t) => fmtOf(scales[1])(t)) }] : []),
    ],
  };
  const u = new uPlot(opts, [x, ...lines.map((l) => l.values)], el);
  const ro = new ResizeObserver(() => {
    const w = el.clientWidth;
    if (w > 0 && Math.abs(w - u.width) > 1) requestAnimationFrame(() => u.setSize({ width: w, height }));
  });
  ro.observe(el);
  live.push({ u, ro });
}

export function destroyCharts() {
  for (const { u, ro } of live.splice(0)) { ro.disconnect(); u.destroy(); }
}

/** The values of one field of several series on the union of their times (null where absent). */
export function align(seriesList, field) {
  const x = [...new Set(seriesList.flatMap((s) => s.points.map((p) => p.t)))].sort((a, b) => a - b);
  const lines = seriesList.map((s) => {
    const at = new Map(s.points.map((p) => [p.t, p[field]]));
    return x.map((t) => (at.has(t) ? at.get(t) : null));
  });
  return { x, lines };
}

/** Requests and errors summed over series, per point in time. */
export function total(seriesList) {
  const { x, lines: req } = align(seriesList, "requests");
  const { lines: err } = align(seriesList, "errors");
  const requests = x.map((_, i) => req.reduce((s, l) => s + (l[i] || 0), 0));
  const errors = x.map((_, i) => err.reduce((s, l) => s + (l[i] || 0), 0));
  return { x, requests, errorRate: requests.map((r, i) => (r > 0 ? errors[i] / r : null)) };
}

export const seriesLabel = (key) => key.split("/").pop();

export function trafficChart(ctx, title, seriesList) {
  const t = total(seriesList);
  return chart(ctx, title, t.x, [
    { label: "requests / min", values: t.requests, scale: "req", fmt: num, color: "--c1", fill: true },
    { label: "error rate", values: t.errorRate, scale: "rate", fmt: pct, axisFmt: axisPct, color: "--bad" },
  ]);
}

export function latencyChart(ctx, title, series) {
  const pick = (f) => series.points.map((p) => p[f]);
  return chart(ctx, title, series.points.map((p) => p.t), [
    { label: "p50", values: pick("p50_ms"), scale: "ms", fmt: ms, axisFmt: axisMs, color: "--c2" },
    { label: "p95", values: pick("p95_ms"), scale: "ms", fmt: ms, axisFmt: axisMs, color: "--c3" },
    { label: "p99", values: pick("p99_ms"), scale: "ms", fmt: ms, axisFmt: axisMs, color: "--c4" },
  ]);
}

/** Per series (one model, or one model on one device): traffic and latency side by side. */
export function perSeriesCharts(ctx, seriesList, emptyText) {
  const charts = (s) => h("div", { class: "charts" },
    trafficChart(ctx, "Requests and error rate", [s]), latencyChart(ctx, "Latency", s));
  if (!seriesList.length) return [empty(emptyText), charts({ key: "", points: [] })];
  return seriesList.map((s) => h("div", { class: "series" },
    h("h3", { class: "series-title" }, seriesLabel(s.key)), charts(s)));
}

/** Draw the charts a view asked for; call once its node is on the page (they size to their boxes). */
export function drawCharts(requested) {
  requested.forEach(drawChart);
}
