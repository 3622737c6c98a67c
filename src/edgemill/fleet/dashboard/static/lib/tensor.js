/* A capture's tensors for people, as GET /captures/{device}/{id}/view describes them: an image drawn on a
 * canvas, a short vector as a grid of values, a long signal as its min/max envelope (uPlot, over the
 * sample index), anything else by shape, dtype and statistics. No tensor can break the page: what cannot
 * be drawn is described instead. */

/* global uPlot */
import { axisStyle, cssVars, followWidth, tickSize } from "./charts.js";
import { h, num } from "./dom.js";

/** A tensor value in a few characters: integers whole, others to 4 significant digits; NaN and ±inf
 * (which the server sends as null) as "NaN". */
export function value(v) {
  if (v == null) return "NaN";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return Math.abs(v) >= 1e7 ? v.toExponential(2) : String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e7)) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

/** "[1 × 3 × 64 × 64] float32" */
export const shapeText = (t) => `[${t.shape.length ? t.shape.join(" × ") : "scalar"}] ${t.dtype}`;

/** "min 0 · max 1 · mean 0.5 · std 0.29", or null without statistics (an empty or non-numeric tensor). */
export function statsText(stats) {
  if (!stats) return null;
  return ["min", "max", "mean", "std"].map((k) => `${k} ${value(stats[k])}`).join(" · ");
}

/** The raster (uint8, row-major, height × width × channels, channels 1 or 3) on a canvas of its own size,
 * shown side CSS pixels on its longer side (a whole multiple when enlarging: pixels stay square); null
 * when the data does not match its description. */
export function imageCanvas(image, side, attrs = {}) {
  const { width, height, channels } = image;
  let raw;
  try { raw = atob(image.data_b64); } catch { return null; }
  if (!(width > 0 && height > 0) || (channels !== 1 && channels !== 3) || raw.length !== width * height * channels) {
    return null;
  }
  const canvas = h("canvas", { width, height, ...attrs });
  const c = canvas.getContext("2d");
  const pixels = c.createImageData(width, height);
  const d = pixels.data;
  for (let p = 0, i = 0; p < width * height; p++, i += channels) {
    const r = raw.charCodeAt(i);
    d[4 * p] = r;
    d[4 * p + 1] = channels === 3 ? raw.charCodeAt(i + 1) : r;
    d[4 * p + 2] = channels === 3 ? raw.charCodeAt(i + 2) : r;
    d[4 * p + 3] = 255;
  }
  c.putImageData(pixels, 0, 0);
  const longer = Math.max(width, height);
  const scale = longer < side ? Math.max(1, Math.floor(side / longer)) : side / longer;
  canvas.style.width = `${Math.round(width * scale)}px`;  // the height follows the canvas's own ratio
  return canvas;
}

function ordinal(n) {
  const teen = n % 100 >= 11 && n % 100 <= 13;
  return `${n}${teen ? "th" : ["th", "st", "nd", "rd"][n % 10] || "th"}`;
}

/** One tensor: its name, shape and dtype, then its data in the form the server chose. */
export function tensorFigure(ctx, t) {
  const head = h("figcaption", {}, h("code", { class: "tensor-name" }, t.name), " ",
    h("span", { class: "muted" }, shapeText(t)));
  const stats = statsText(t.stats);
  const statsLine = stats ? h("p", { class: "small muted tensor-stats" }, stats) : null;
  const problem = t.problem ? h("p", { class: "small warn-text" }, `Not drawn: ${t.problem}`) : null;
  let body = null;
  if (t.kind === "image" && t.image) body = imageBody(t);
  else if (t.kind === "table" && Array.isArray(t.values)) body = tableBody(t);
  else if (t.kind === "waveform" && t.waveform) body = waveformBody(ctx, t);
  if (!body) {  // "other", or a kind this page does not know: described, not drawn
    body = h("dl", { class: "kv tensor-other" },
      h("dt", {}, "shape"), h("dd", {}, `[${t.shape.join(", ")}]`),
      h("dt", {}, "dtype"), h("dd", {}, t.dtype),
      h("dt", {}, "values"), h("dd", {}, num(t.shape.reduce((a, b) => a * b, 1))));
  }
  return h("figure", { class: `tensor kind-${t.kind}` }, head, body, statsLine, problem);
}

const IMAGE_SIDE = 256;

function imageBody(t) {
  const img = t.image;
  const canvas = imageCanvas(img, IMAGE_SIDE, { class: "pixelated", role: "img",
    "aria-label": `${t.name}: ${img.width} × ${img.height} ${img.channels === 1 ? "grey" : "colour"} image` });
  if (!canvas) return null;
  const notes = [`${img.width} × ${img.height} ${img.channels === 1 ? "grey" : "RGB"}`];
  if (img.step > 1) notes.push(`every ${ordinal(img.step)} pixel`);
  if (img.scaled_from) notes.push(`scaled from [${value(img.scaled_from[0])}, ${value(img.scaled_from[1])}]`);
  if (t.shape[0] > 1) notes.push(`first of ${num(t.shape[0])} samples`);
  return h("div", { class: "tensor-image" }, canvas, h("p", { class: "small muted" }, notes.join(" · ")));
}

function tableBody(t) {
  const total = t.shape.length >= 2 ? t.shape.slice(1).reduce((a, b) => a * b, 1) : t.shape.reduce((a, b) => a * b, 1);
  return h("div", {},
    h("ol", { class: "values", start: 0 }, t.values.map((v, i) =>
      h("li", {}, h("span", { class: "i" }, `${i}`), h("span", { class: "v" }, value(v))))),
    t.truncated ? h("p", { class: "small muted" }, `First ${num(t.values.length)} of ${num(total)} values.`) : null,
    t.shape.length >= 2 && t.shape[0] > 1 ? h("p", { class: "small muted" }, `First of ${num(t.shape[0])} samples.`) : null);
}

const WAVEFORM_HEIGHT = 200;

function waveformBody(ctx, t) {
  const w = t.waveform;
  const n = Math.min(w.min.length, w.max.length);
  if (!n) return null;
  const x = Array.from({ length: n }, (_, i) => Math.round((i * w.samples) / n));
  const plot = h("div", { class: "plot" });
  ctx.mounts.push(() => drawWaveform(plot, x, w.min.slice(0, n), w.max.slice(0, n)));
  return h("div", {}, plot,
    h("p", { class: "small muted" }, `${num(w.samples)} samples`,
      n < w.samples ? `, drawn as the lowest and highest value of each of ${num(n)} spans` : ""));
}

/** The envelope: the highest and the lowest value per span of samples, the band between them filled. */
function drawWaveform(el, x, lows, highs) {
  const v = cssVars();
  const color = v("--c1");
  const axis = axisStyle(v);
  const yRange = (u, min, max) => {
    if (!(max > min)) return [(min || 0) - 1, (max || 0) + 1];
    const pad = (max - min) * 0.06;
    return [min - pad, max + pad];
  };
  const line = (label) => ({ label, stroke: color, width: 1, spanGaps: true, points: { show: false },
    value: (u, val) => (val == null ? "–" : value(val)) });
  const u = new uPlot({
    width: Math.max(el.clientWidth, 200),
    height: WAVEFORM_HEIGHT,
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: false }, y: { range: yRange } },
    series: [{ label: "sample", value: (u, val) => (val == null ? "–" : num(val)) }, line("highest"), line("lowest")],
    bands: [{ series: [1, 2], fill: `${color}33` }],
    axes: [{ ...axis, space: 80, values: (u, ticks) => ticks.map((s) => num(s)) },
      { ...axis, size: tickSize, space: 20, values: (u, ticks) => ticks.map(value) }],  // a few levels even when short
  }, [x, highs, lows], el);
  const ro = followWidth(el, u, WAVEFORM_HEIGHT);
  return () => { ro.disconnect(); u.destroy(); };
}
