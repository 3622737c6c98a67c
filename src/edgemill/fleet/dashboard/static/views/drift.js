/* Drift pieces the model and device pages show from /api/v1/drift (DriftOut): the status line, the
 * reference, PSI over time, the features, a feature's histogram against its reference, the devices. */

import { PSI_MODERATE, PSI_SIGNIFICANT, chip, deviceLink, duration, h, link, num, psi, psiTone, psiWord, table, when }
  from "../lib/dom.js";
import { chart } from "../lib/charts.js";
import { histogram } from "../lib/histogram.js";

const WINDOW_S = 3600;  // the features' and devices' histograms: the counts of the last hour
const RANGE_S = 86400;  // the PSI charts: the last day

const PSI_HINT = "PSI (population stability index) compares the share of samples in each bin with the "
  + "reference: under 0.1 stable, 0.1 to 0.25 moderate, above 0.25 significant. "
  + "Output drift without labels warns that accuracy may be falling.";

/** The API path of a model's drift, optionally of one version and one device. */
export function driftPath(model, version, device) {
  const q = new URLSearchParams({ model });
  if (version) q.set("version", version);
  if (device) q.set("device", device);
  q.set("window_s", WINDOW_S);
  q.set("range_s", RANGE_S);
  return `/drift?${q}`;
}

const STATUS_CHIPS = {
  no_baseline: ["no baseline", "none"], no_data: ["no data", "none"], few_samples: ["few samples", "warn"] };

/** The larger of an input and a prediction PSI; null when neither is known. */
export function worstPsi(input, prediction) {
  const known = [input, prediction].filter((v) => v != null);
  return known.length ? Math.max(...known) : null;
}

function statusChip(d) {
  if (d.status !== "ok") return chip(...STATUS_CHIPS[d.status]);
  const worst = worstPsi(d.input_psi, d.prediction_psi);
  return chip(worst != null && worst >= PSI_MODERATE ? `${psiWord(worst)} drift` : "stable", psiTone(worst) || "ok");
}

/** A PSI coloured by its tone, with the feature it is of; null when unknown. */
function score(label, value, feature) {
  if (value == null) return null;
  const tone = psiTone(value);
  return h("span", {}, label ? `${label} ` : null, h("strong", { class: tone ? `${tone}-text` : null }, psi(value)),
    feature ? [" ", h("code", { class: "muted" }, feature)] : null);
}

/** A chip for the status, the server's line, and (unless there is no baseline) the largest PSI of each side. */
export function driftStatus(d) {
  const scores = d.status === "no_baseline" ? [] : [
    score("input PSI", d.input_psi, d.input_feature),
    score("prediction PSI", d.prediction_psi, d.prediction_feature)].filter(Boolean);
  return h("div", { class: "drift-status" },
    h("div", { class: "item-head" }, statusChip(d), h("span", {}, d.message)),
    scores.length ? h("p", { class: "scores small" }, scores.flatMap((s, i) => (i ? [" · ", s] : [s]))) : null);
}

/** What the window is compared with: the package baseline or a pinned window. */
export function referenceLine(d, ...actions) {
  const r = d.reference;
  if (!r) return null;
  const what = r.kind === "pinned"
    ? ["a pinned window, from ", when(r.start), " to ", when(r.end), `, ${num(r.samples)} samples`]
    : [`the package baseline, ${num(r.samples)} samples of ${r.data || "unnamed data"}`];
  return h("p", { class: "drift-reference small" }, "Reference: ", what,
    r.synthetic ? h("span", { class: "warn-text" }, "(synthetic: weak evidence of real data)") : null,
    actions.length ? h("span", { class: "inline-actions" }, actions) : null);
}

/** "N histograms refused" when devices sent counts over other bins than the package's; else nothing. */
export function refusedNote(d) {
  if (!d.refused) return null;
  const text = d.refused === 1 ? "1 histogram refused: its bins do not match the package"
    : `${num(d.refused)} histograms refused: their bins do not match the package`;
  return h("p", { class: "warn-text small" }, `${text}.`);
}

export const hint = () => h("p", { class: "hint muted small" }, PSI_HINT);

const GUIDES = [{ value: PSI_MODERATE, label: "moderate", color: "--warn" },
  { value: PSI_SIGNIFICANT, label: "significant", color: "--bad" }];
const axisPsi = (v) => String(Number(v.toPrecision(2)));

function psiChart(ctx, d, title, worstField, medianField) {
  const pick = (field) => d.series.map((p) => p[field]);
  const line = { scale: "psi", fmt: psi, axisFmt: axisPsi };
  // One device's drift is one line; a population's is its worst device and its median device.
  const lines = d.device ? [{ ...line, label: "PSI", values: pick(worstField), color: "--c1" }]
    : [{ ...line, label: "worst device", values: pick(worstField), color: "--c1" },
      { ...line, label: "median device", values: pick(medianField), color: "--c5", dash: true }];
  return chart(ctx, title, d.series.map((p) => p.t), lines, { floor: 0.3, guides: GUIDES });
}

/** Input and prediction PSI over the range, side by side. */
export function psiCharts(ctx, d) {
  const range = `last ${RANGE_S / 3600} h`;
  return h("div", { class: "charts" },
    psiChart(ctx, d, `Input drift (PSI), ${range}`, "input_psi", "median_input_psi"),
    psiChart(ctx, d, `Prediction drift (PSI), ${range}`, "prediction_psi", "median_prediction_psi"));
}

/** Features, worst first (those without a PSI last). */
export const byPsi = (features) => [...features].sort((a, b) => (b.psi ?? -1) - (a.psi ?? -1));

/** The features' PSI and JS distance, worst first; each key links to hrefOf(key) where given. */
export function featureTable(features, { selected, hrefOf } = {}) {
  const rows = features.map((f) => h("tr", { class: `${psiTone(f.psi)}${f.key === selected ? " selected" : ""}`.trim() },
    h("th", { scope: "row" }, hrefOf
      ? link(hrefOf(f.key), h("code", {}, f.key), { "aria-current": f.key === selected ? "true" : null })
      : h("code", {}, f.key)),
    h("td", { class: "num" }, psi(f.psi)),
    h("td", { class: "num" }, psi(f.js)),
    h("td", {}, f.psi == null ? h("span", { class: "muted" }, "no data")
      : chip(psiWord(f.psi), psiTone(f.psi) || "ok"))));
  return table(["Feature", "PSI", "JS", "Drift"], rows, "No features.");
}

/** One feature's share of samples per bin: its reference beside the window. */
export function featureHistogram(f, d) {
  const title = h("span", {}, h("code", {}, f.key), ` · PSI ${psi(f.psi)}`);
  return histogram(f, title, `window, last ${duration(d.window_s)}`);
}

/** Devices in scope, worst first, each linking to its page. */
export function deviceTable(d) {
  const rows = d.devices.map((dev) => h("tr", { class: psiTone(worstPsi(dev.input_psi, dev.prediction_psi)) },
    h("th", { scope: "row" }, deviceLink(dev.device)),
    h("td", {}, dev.fleet),
    h("td", { class: "num" }, num(dev.samples)),
    h("td", {}, score(null, dev.input_psi, dev.input_feature) ?? "–"),
    h("td", {}, score(null, dev.prediction_psi, dev.prediction_feature) ?? "–")));
  return table(["Device", "Fleet", "Samples", "Input PSI", "Prediction PSI"], rows,
    "No device sent drift counts in the window.");
}
