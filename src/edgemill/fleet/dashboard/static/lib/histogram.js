/* A drift histogram comparison, drawn with HTML: per bin, the reference's share beside the window's. */

import { axisPct, h, pct } from "./dom.js";

// A classifier's predicted class may have up to 1,001 bins: the largest are shown, the rest summed.
const MAX_BINS = 24;
const NICE_TOPS = [0.02, 0.05, 0.1, 0.2, 0.25, 0.4, 0.5, 0.6, 0.8, 1];

function shares(counts) {
  const total = counts.reduce((s, c) => s + c, 0);
  return counts.map((c) => (total ? c / total : 0));
}

const largest = (bin) => Math.max(bin.reference, bin.window);

/** {label, reference, window} shares per bin, in bin order; past MAX_BINS the smallest are summed into one. */
function binShares(feature) {
  const reference = shares(feature.reference);
  const window = shares(feature.window);
  const bins = feature.labels.map((label, i) => ({ label, reference: reference[i], window: window[i] }));
  if (bins.length <= MAX_BINS) return bins;
  const kept = new Set([...bins].sort((a, b) => largest(b) - largest(a)).slice(0, MAX_BINS - 1));
  const rest = bins.filter((b) => !kept.has(b));
  const sum = (side) => rest.reduce((s, b) => s + b[side], 0);
  return [...bins.filter((b) => kept.has(b)),
    { label: `${rest.length} other bins`, reference: sum("reference"), window: sum("window") }];
}

const shortNumber = (value) => String(Number(value.toPrecision(3)));

/** The axis under the bars: a continuous feature's edges at the bin boundaries, else each bin's label. */
function binAxis(bins, edges, columns) {
  if (edges) {
    return h("div", { class: "hist-labels edges", style: columns, "aria-hidden": "true" },
      edges.map((e, i) => h("span", { style: `grid-column:${i + 1}` }, shortNumber(e))));
  }
  return h("div", { class: "hist-labels", style: columns, "aria-hidden": "true" },
    bins.map((b) => h("span", {}, b.label)));
}

const bar = (side, share, top) => h("span", { class: `bar ${side}`, style: `height:${(100 * share) / top}%` });

/** Reference vs window share per bin of one DriftFeatureOut, as a grouped bar chart. */
export function histogram(feature, title, windowLabel) {
  const bins = binShares(feature);
  const top = NICE_TOPS.find((t) => t >= Math.max(...bins.map(largest))) ?? 1;
  const noWindow = feature.window.every((c) => c === 0);
  const described = `Share of samples per bin, reference vs window: ${
    bins.map((b) => `${b.label}: ${pct(b.reference)} vs ${pct(b.window)}`).join("; ")}.`;
  const columns = `--bins:${bins.length}`;
  return h("figure", { class: "chart hist" },
    h("figcaption", {}, title),
    h("ul", { class: "legend hist-legend" },
      h("li", {}, h("span", { class: "swatch reference", "aria-hidden": "true" }), "reference"),
      h("li", {}, h("span", { class: "swatch window", "aria-hidden": "true" }), windowLabel,
        noWindow ? h("span", { class: "muted" }, "(no samples)") : null)),
    h("div", { class: "hist-plot", role: "img", "aria-label": described },
      h("div", { class: "hist-axis", "aria-hidden": "true" }, [top, top / 2, 0].map((t) => h("span", {}, axisPct(t)))),
      h("div", { class: "hist-bins", style: columns }, bins.map((b) =>
        h("div", { class: "hist-bin", title: `${b.label}: reference ${pct(b.reference)}, window ${pct(b.window)}` },
          bar("reference", b.reference, top), bar("window", b.window, top)))),
      binAxis(bins, bins.length === feature.labels.length && feature.edges.length ? feature.edges : null, columns)));
}
