/* Models: the list, and one model with its versions, lineage and charts. */

import { bytes, chip, deploymentLink, deviceLink, empty, enc, h, modelLink, ms, num, parseTime, pct, plain, section, short, table, when } from "../lib/dom.js";
import { api } from "../lib/api.js";
import { WINDOW, perSeriesCharts } from "../lib/charts.js";

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

export async function viewModel(route, ctx) {
  const name = route.arg;
  const [model, series] = await Promise.all([
    api(`/models/${enc(name)}`), api(`/metrics/series?model=${enc(name)}&${WINDOW}`)]);
  const versions = [...model.version_list].sort((a, b) => parseTime(b.created_at) - parseTime(a.created_at));
  const shown = versions.slice(0, LINEAGE_LIMIT);
  const lineages = await Promise.all(shown.map((v) =>
    api(`/models/${enc(name)}/versions/${enc(v.version)}/lineage`)));
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
    section("Lineage", lineages.map((l, i) => lineageChain(l, shown[i])),
      versions.length > shown.length ? empty(`Lineage of the ${versions.length - shown.length} older versions is not shown.`) : null),
    section("Performance, last hour", perSeriesCharts(ctx, series, "No metrics for this model in the last hour.")));
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
