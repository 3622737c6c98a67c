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

const MIN_SPAN_S = 600;

/** The times a chart shows: its samples' own span (uPlot's x data is sorted), widened about its middle to
 * at least MIN_SPAN_S. Read from the data, not from the range uPlot proposes: around a lone sample it
 * proposes 86,400,000 time units, years when the unit is a second. (The charts do not zoom.) */
function timeRange(u) {
  const x = u.data[0];
  const first = x[0];
  const last = x[x.length - 1];
  if (last - first >= MIN_SPAN_S) return [first, last];
  const middle = (first + last) / 2;
  return [middle - MIN_SPAN_S / 2, middle + MIN_SPAN_S / 2];
}

const timeTag = (s) => {
  const d = new Date(s * 1000);
  return h("time", { datetime: d.toISOString() }, d.toLocaleTimeString());
};

/** A time chart: x in unix seconds, lines [{label, values, scale, fmt, axisFmt?, color?, fill?, dash?}] on one
 * or two y scales (the second drawn on the right). Shows "no data yet" when no line has a value.
 * Options: height; floor, the least top of the first scale (so that its guides show); guides, horizontal
 * lines [{value, label, color}] on the first scale. */
export function chart(ctx, title, x, lines, { height = 200, floor = 0, guides = [] } = {}) {
  const box = h("figure", { class: "chart" }, h("figcaption", {}, title));
  const hasData = x.length > 0 && lines.some((l) => l.values.some((v) => v != null));
  if (!hasData) {
    box.append(h("div", { class: "no-data", style: `height:${height}px` }, "no data yet"));
    return box;
  }
  const plot = h("div", { class: "plot" });
  // The canvas says nothing to a screen reader: the times it spans (once drawn) and the latest values do.
  const span = h("span");
  const latest = lines.map((l) => {
    const last = [...l.values].reverse().find((v) => v != null);
    return `${l.label} ${last == null ? "none" : l.fmt(last)}`;
  });
  box.append(plot, h("p", { class: "sr-only" }, span, `Latest: ${latest.join("; ")}.`));
  ctx.charts.push({ el: plot, span, x, lines, height, floor, guides });
  return box;
}

/** A y range from zero (every value charted is a count, a rate, a latency or a PSI: never negative) to a
 * little above the largest value, and at least to floor; all zeros get a range of their own. */
const yRange = (floor) => (u, min, max) => [0, Math.max(max > 0 ? max * 1.15 : floor || 1, floor)];

const GUIDE_FONT_PX = 11;

/** Dashed horizontal lines with a label at their right end, under the series. On a tall scale the lines
 * come close: from the top down, a label that would overlap the one above it is left out. */
function drawGuides(guides, scale, colorOf) {
  return (u) => {
    const c = u.ctx;
    const px = devicePixelRatio;
    const { left, width } = u.bbox;
    c.save();
    c.lineWidth = px;
    c.setLineDash([6 * px, 4 * px]);
    c.font = `${GUIDE_FONT_PX * px}px system-ui, sans-serif`;
    c.textAlign = "right";
    c.textBaseline = "bottom";
    let labelBottom = -Infinity;
    for (const g of [...guides].sort((a, b) => b.value - a.value)) {
      const y = Math.round(u.valToPos(g.value, scale, true));
      c.strokeStyle = c.fillStyle = colorOf(g.color);
      c.beginPath();
      c.moveTo(left, y);
      c.lineTo(left + width, y);
      c.stroke();
      const bottom = y - 2 * px;
      if (bottom - GUIDE_FONT_PX * px >= labelBottom) {
        c.fillText(g.label, left + width - 4 * px, bottom);
        labelBottom = bottom;
      }
    }
    c.restore();
  };
}

/** A reader of the page's CSS custom properties (the charts' colours). */
export function cssVars() {
  const css = getComputedStyle(document.documentElement);
  return (name) => css.getPropertyValue(name).trim();
}

/** The look every chart's axes share. */
export const axisStyle = (v) => ({ stroke: v("--muted"), grid: { stroke: v("--grid"), width: 1 },
  ticks: { stroke: v("--grid"), width: 1 } });

/** Room for the longest tick label (uPlot's axis font is 12px; about 7px a character). */
export const tickSize = (u, values) => 18 + 7 * Math.max(3, ...(values || []).map((t) => String(t).length));

/** Keep the chart as wide as its box; returns the observer (disconnect it with the chart). */
export function followWidth(el, u, height) {
  const ro = new ResizeObserver(() => {
    const w = el.clientWidth;
    if (w > 0 && Math.abs(w - u.width) > 1) requestAnimationFrame(() => u.setSize({ width: w, height }));
  });
  ro.observe(el);
  return ro;
}

function drawChart({ el, span, x, lines, height, floor, guides }) {
  const v = cssVars();
  const scales = [...new Set(lines.map((l) => l.scale))];
  const fmtOf = (scale) => {
    const l = lines.find((line) => line.scale === scale);
    return l.axisFmt || l.fmt;
  };
  const axis = axisStyle(v);
  const opts = {
    width: Math.max(el.clientWidth, 200),
    height,
    cursor: { drag: { x: false, y: false } },
    scales: {
      x: { time: true, range: timeRange },
      ...Object.fromEntries(scales.map((s, i) => [s, { range: yRange(i === 0 ? floor : 0) }])),
    },
    series: [{ label: "time" }, ...lines.map((l, i) => {
      const color = l.color ? v(l.color) : v(PALETTE[i % PALETTE.length]);
      return {
        label: l.label, scale: l.scale, stroke: color, width: 2, spanGaps: true, dash: l.dash ? [6, 4] : undefined,
        fill: l.fill ? `${color}22` : undefined,
        points: x.length === 1 ? { show: true, size: 9, fill: color } : { show: x.length < 4, size: 5 },
        value: (u, val) => (val == null ? "–" : l.fmt(val)),
      };
    })],
    axes: [
      { ...axis, space: 80 },
      { ...axis, scale: scales[0], size: tickSize, values: (u, ticks) => ticks.map((t) => fmtOf(scales[0])(t)) },
      ...(scales[1] ? [{ ...axis, scale: scales[1], side: 1, size: tickSize, grid: { show: false },
        values: (u, ticks) => ticks.map((t) => fmtOf(scales[1])(t)) }] : []),
    ],
    hooks: {
      setScale: [(u, key) => {
        if (key === "x") span.replaceChildren("From ", timeTag(u.scales.x.min), " to ", timeTag(u.scales.x.max), ". ");
      }],
      drawAxes: guides.length ? [drawGuides(guides, scales[0], v)] : [],
    },
  };
  const u = new uPlot(opts, [x, ...lines.map((l) => l.values)], el);
  live.push({ u, ro: followWidth(el, u, height) });
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
