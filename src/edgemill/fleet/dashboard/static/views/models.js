/* Models: the list, and one model with its versions, live accuracy, lineage, drift and charts. */

import { axisPct, bytes, chip, deploymentLink, deviceLink, duration, empty, enc, h, link, modelLink, ms, num, parseTime, pct,
  plain, section, short, table, when } from "../lib/dom.js";
import { api } from "../lib/api.js";
import { WINDOW, chart, perSeriesCharts } from "../lib/charts.js";
import { value } from "../lib/tensor.js";
import { byPsi, deviceTable, driftPath, driftStatus, featureHistogram, featureTable, hint, psiCharts, referenceLine,
  refusedNote } from "./drift.js";

export async function viewModels() {
  const [models, ov] = await Promise.all([api("/models"), api("/overview")]);
  const problems = new Map(ov.problem_models.map((m) => [m.name, m]));
  const rows = models.map((m) => {
    const p = problems.get(m.name);
    return h("tr", { class: p ? "bad" : "" },
      h("th", { scope: "row" }, modelLink(m.name)),
      h("td", {}, num(m.versions)),
      h("td", {}, m.latest_version ?? "–"),
      h("td", {}, m.production_version ?? h("span", { class: "muted" }, "none")),
      h("td", {}, when(m.created_at)),
      h("td", { class: "small" }, p ? p.reason || `errors ${pct(p.error_rate)}` : ""));
  });
  return h("div", {}, h("h1", {}, "Models"),
    table(["Model", "Versions", "Latest", "Production", "Created", "Problem"], rows, "No model uploaded yet."));
}

const LINEAGE_LIMIT = 10;
const ACCURACY_RANGE_S = 7 * 86400;  // live accuracy: the predictions of the last week

export async function viewModel(route, ctx) {
  const name = route.arg;
  const [model, series, accuracy] = await Promise.all([
    api(`/models/${enc(name)}`), api(`/metrics/series?model=${enc(name)}&${WINDOW}`),
    api(`/accuracy?model=${enc(name)}&range_s=${ACCURACY_RANGE_S}`)]);
  const versions = [...model.version_list].sort((a, b) => parseTime(b.created_at) - parseTime(a.created_at));
  const shown = versions.slice(0, LINEAGE_LIMIT);
  // Drift of the version asked for, else of the one in production, else of the newest.
  const driftVersion = route.query.get("version") || model.production_version || model.latest_version;
  const [drift, ...lineages] = await Promise.all([
    driftVersion ? api(driftPath(name, driftVersion)) : null,
    ...shown.map((v) => api(`/models/${enc(name)}/versions/${enc(v.version)}/lineage`))]);
  document.title = `${model.name} · edgemill fleet`;

  const rows = versions.map((v) => h("tr", {},
    h("th", { scope: "row" }, v.version), h("td", {}, chip(v.stage, `stage-${v.stage}`)),
    h("td", {}, v.target), h("td", {}, v.backend), h("td", {}, v.precision), h("td", {}, bytes(v.size_bytes)),
    h("td", {}, v.signer ? short(v.signer) : h("span", { class: "warn-text" }, "unsigned")),
    h("td", {}, when(v.created_at))));

  return h("div", {},
    h("div", { class: "page-head" }, h("h1", {}, model.name),
      h("span", { class: "muted" }, `${num(model.versions)} versions · production `,
        model.production_version ?? "none", " · created ", when(model.created_at))),
    section("Versions", table(["Version", "Stage", "Target", "Backend", "Precision", "Size", "Signer", "Created"],
      rows, "No versions.")),
    accuracySection(ctx, model.name, accuracy),
    section("Lineage", lineages.map((l, i) => lineageChain(l, shown[i])),
      versions.length > shown.length ? empty(`Lineage of the ${versions.length - shown.length} older versions is not shown.`) : null),
    drift ? driftSection(ctx, model.name, versions, drift, route.query) : null,
    section("Performance, last hour", perSeriesCharts(ctx, series, "No metrics for this model in the last hour.")));
}

const FEATURES_SHOWN = 10;

/** The model page's address with these choices (drift version, selected feature, all features). */
function modelHref(name, choices) {
  const q = new URLSearchParams(Object.entries(choices).filter(([, v]) => v));
  const query = q.toString();
  return `#model/${enc(name)}${query ? `?${query}` : ""}`;
}

function driftSection(ctx, name, versions, d, query) {
  const choices = { version: d.version, feature: query.get("feature"), features: query.get("features") };
  const href = (change) => modelHref(name, { ...choices, ...change });
  const picker = h("div", { class: "filters" },
    h("label", { for: "drift-version" }, "Version"),
    h("select", { id: "drift-version",
      onchange: (e) => { location.hash = href({ version: e.target.value, feature: null }); } },
      versions.map((v) => h("option", { value: v.version, selected: v.version === d.version },
        v.stage === "none" ? v.version : `${v.version} (${v.stage})`))));
  if (d.status === "no_baseline") return section("Drift", picker, driftStatus(d), hint());

  const features = byPsi(d.features);
  const selected = features.find((f) => f.key === choices.feature) ?? features[0];
  const all = choices.features === "all";
  const more = features.length > FEATURES_SHOWN
    ? h("p", { class: "small more" }, link(href({ features: all ? null : "all" }),
      all ? `only the worst ${FEATURES_SHOWN}` : `all ${features.length} features`))
    : null;
  return section("Drift", picker, driftStatus(d), referenceLine(d, ...pinActions(ctx, name, d)), refusedNote(d), hint(),
    psiCharts(ctx, d),
    h("div", { class: "cols" },
      h("div", {}, h("h3", {}, "Features, worst first"),
        featureTable(all ? features : features.slice(0, FEATURES_SHOWN),
          { selected: selected?.key, hrefOf: (key) => href({ feature: key }) }), more),
      selected ? h("div", {}, h("h3", {}, "Feature against its reference"), featureHistogram(selected, d)) : null),
    h("h3", {}, "Devices, worst first"), deviceTable(d));
}

/** Pin the last window's counts as this version's reference; unpin a pinned one. */
function pinActions(ctx, name, d) {
  if (!ctx.can("deployer") || !ctx.everyFleet) return [];  // a reference is every fleet's: a limited key cannot pin
  const path = `/models/${enc(name)}/versions/${enc(d.version)}/drift-reference`;
  const window = duration(d.window_s);
  const pin = h("button", {
    type: "button", class: "secondary", disabled: !d.samples,
    onclick: (e) => ctx.confirmThen(e.currentTarget, `Pin the last ${window} as the reference?`,
      `Drift of ${name} ${d.version} is then measured against what its devices saw in the last ${window}, `
        + "not against the package baseline.", "Pin",
      () => api(path, { method: "PUT", body: { last_s: d.window_s } })),
  }, `Pin the last ${window} as reference`);
  if (d.reference?.kind !== "pinned") return [pin];
  const unpin = h("button", {
    type: "button", class: "secondary",
    onclick: (e) => ctx.confirmThen(e.currentTarget, "Unpin the reference?",
      `Drift of ${name} ${d.version} is measured against the package baseline again.`, "Unpin",
      () => api(path, { method: "DELETE" })),
  }, "Unpin");
  return [pin, unpin];
}

function accuracyText(acc) {
  if (!acc || typeof acc !== "object") return acc == null ? null : String(acc);
  if (acc.metric == null) return plain(acc);
  const allowed = acc.allowed != null ? ` (allowed ${acc.allowed})` : "";
  const drop = acc.drop != null ? `, drop ${acc.drop}` : "";
  return `${acc.metric.replace(/_/g, " ")} ${acc.value}${drop}${allowed}`;
}

/** A target as a name: the manifest gives a string, the compile report a {name, ...} object. */
const targetName = (t) => (t && typeof t === "object" ? t.name : t);

function lineageChain(l, version) {
  const node = (title, ...body) => h("li", { class: "node" }, h("h4", {}, title), ...body);
  const line = (...parts) => h("div", { class: "small" }, ...parts);
  const src = l.source || {};
  const cmp = l.compile || {};
  const pkg = l.package || {};
  const passes = Array.isArray(cmp.passes) ? `${cmp.passes.length} passes`
    : Array.isArray(cmp.steps) ? `${cmp.steps.length} steps` : null;
  const speed = cmp.latency && cmp.latency.compiled_p50_ms != null
    ? `p50 ${ms(cmp.latency.compiled_p50_ms)}${cmp.latency.speedup ? ` (×${cmp.latency.speedup})` : ""}` : null;
  return h("div", { class: "lineage" },
    h("h3", {}, `${l.version} `, chip(version.stage, `stage-${version.stage}`)),
    h("ol", { class: "chain", "aria-label": `Lineage of ${l.model} ${l.version}` },
      node("Source",
        line([src.framework, src.framework_version].filter(Boolean).join(" ") || "–"),
        src.file ? line(src.file) : null,
        line("sha256 ", short(src.sha256))),
      node("Compile",
        line([cmp.precision, cmp.backend, targetName(cmp.target)].filter(Boolean).join(" / ") || "–"),
        cmp.accuracy != null ? line(accuracyText(cmp.accuracy)) : null,
        dataParents(cmp.parents).map((p) => line(p)),
        passes ? line(passes) : null,
        speed ? line(speed) : null),
      node("Package",
        line("id ", short(pkg.id || version.package_id)),
        pkg.size_bytes != null ? line(bytes(pkg.size_bytes)) : null,
        line("signer ", pkg.signer ? short(pkg.signer) : h("span", { class: "warn-text" }, "unsigned"))),
      node("Deployments", l.deployments.length
        ? h("ul", {}, l.deployments.map((d) => h("li", { class: "small" }, deploymentLink(d.id), " ", chip(d.state), " ",
          `${d.fleet} · ${d.devices_updated}/${d.devices_targeted} updated`)))
        : line(h("span", { class: "muted" }, "not deployed"))),
      node("Devices", l.devices.length
        ? h("ul", {}, l.devices.map((d) => h("li", { class: "small" }, deviceLink(d))))
        : line(h("span", { class: "muted" }, "none running it")))));
}

// --- where a version's data came from ------------------------------------------------------------------

const DATA_ROLES = { validation: "validated on", calibration: "calibrated on", baseline: "drift baseline from" };

/** The compile's data parents that are exports of captures (ROLE:captures:MODEL@VERSION:SAMPLES), each as
 * "validated on 10 samples captured by detector 1.0.0" linking to those captures; other parents but the source
 * (which the Source node shows) as they are. */
export function dataParents(parents) {
  if (!Array.isArray(parents)) return [];
  return parents.filter((p) => typeof p === "string" && !p.startsWith("source:")).map((p) => {
    const m = p.match(/^([a-z_]+):captures:([^@]+)@(.+):(\d+)$/);
    if (!m) return h("code", { class: "parent" }, p);
    const [, role, model, version, count] = m;
    const href = `#captures?${new URLSearchParams({ model, version })}`;
    return h("span", { class: "parent", title: p }, `${DATA_ROLES[role] || `${role.replace(/_/g, " ")} on`} `,
      link(href, `${num(Number(count))} samples captured by ${model} ${version}`));
  });
}

// --- live accuracy from labeled captures ---------------------------------------------------------------

const FEW_LABELS = 30;
const BUCKET_WORDS = { 3600: "hour", 86400: "day" };

/** The figure a group or a point shows: top-1 as a percentage, a regressor's MAE as a number. */
const figure = (task) => (task === "classification" ? pct : value);

function accuracySection(ctx, name, a) {
  const capturesHref = `#captures?${new URLSearchParams({ model: name })}`;
  if (!a.task) {
    return section("Live accuracy", h("p", { class: "empty" },
      "No labeled captures yet — label captures on the ", link(capturesHref, "Captures page"), "."));
  }
  const cls = a.task === "classification";
  const fmt = figure(a.task);
  const samples = `${num(a.samples)} labeled sample${a.samples === 1 ? "" : "s"}`;
  const headline = h("p", { class: "headline" },
    cls ? h("strong", { class: "big" }, pct(a.top1))
      : [h("strong", { class: "big" }, `MAE ${value(a.mae)}`), h("strong", {}, ` · RMSE ${value(a.rmse)}`)],
    ` of ${samples}`,
    h("span", { class: "muted small" }, ` (${num(a.captures)} capture${a.captures === 1 ? "" : "s"}) · `,
      `${cls ? "top-1, " : ""}all versions, predictions of the last 7 days · `),
    link(`#captures?${new URLSearchParams({ model: name, labeled: "false" })}`, "label more captures", { class: "small" }));
  const few = a.samples < FEW_LABELS
    ? h("p", { class: "small warn-text" }, `Few labels: with ${samples}, each new label can move the figure a lot.`) : null;

  const x = a.series.map((p) => parseTime(p.t).getTime() / 1000);
  const per = BUCKET_WORDS[a.bucket_s] || duration(a.bucket_s);
  const trend = chart(ctx, `${cls ? "Top-1 accuracy" : "Mean absolute error"} per ${per}`, x, [
    { label: cls ? "top-1" : "MAE", values: a.series.map((p) => p.value), scale: "acc", fmt, axisFmt: cls ? axisPct : value,
      color: "--c2" },
    { label: "labeled samples", values: a.series.map((p) => p.samples), scale: "n", fmt: num, color: "--c1", dash: true },
  ], { floor: cls ? 1 : 0 });
  const groups = (title, list, link_) => h("div", {}, h("h3", {}, title),
    table([title.replace(/^By /, ""), "Labeled samples", cls ? "Top-1" : "MAE"], list.map((g) => h("tr", {},
      h("th", { scope: "row" }, link_ ? link_(g.name) : g.name),
      h("td", { class: "num" }, num(g.samples)),
      h("td", { class: "num" }, fmt(g.value)))), "None."));
  return section("Live accuracy", headline, few,
    h("div", { class: "accuracy-cols" }, trend,
      h("div", { class: "accuracy-groups" },
        groups("By version", a.by_version,
          (v) => link(`#captures?${new URLSearchParams({ model: name, version: v, labeled: "true" })}`, v)),
        groups("By device", a.by_device, deviceLink),
        a.by_fleet.length > 1 ? groups("By fleet", a.by_fleet) : null)));
}
