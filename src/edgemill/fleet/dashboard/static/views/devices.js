/* Devices: the list with filters, and one device with its models, agent report, drift and charts. */

import { bytes, chip, deviceLink, dl, duration, empty, enc, h, link, modelLink, num, parseTime, pct, plain, section, short,
  table, when } from "../lib/dom.js";
import { api, apiPage } from "../lib/api.js";
import { WINDOW, perSeriesCharts } from "../lib/charts.js";
import { STATUSES, deviceTone, problemList } from "./common.js";
import { byPsi, driftPath, driftStatus, featureHistogram, featureTable, hint, psiCharts, referenceLine, refusedNote }
  from "./drift.js";

const PAGE = 500;  // devices per page (the server's default; it allows up to 5,000)

export async function viewDevices(route) {
  const fleet = route.query.get("fleet") || "";
  const status = route.query.get("status") || "";
  const offset = Math.max(0, Number.parseInt(route.query.get("offset") || "0", 10) || 0);
  const q = new URLSearchParams();
  if (fleet) q.set("fleet", fleet);
  if (status) q.set("status", status);
  q.set("limit", PAGE);
  if (offset) q.set("offset", offset);
  const [{ items: devices, total }, fleets] = await Promise.all([apiPage(`/devices?${q}`), api("/fleets")]);
  const go = (f, s, from = 0) => {
    const p = new URLSearchParams();
    if (f) p.set("fleet", f);
    if (s) p.set("status", s);
    if (from) p.set("offset", from);
    return `#devices${p.toString() ? `?${p}` : ""}`;
  };

  const filters = h("div", { class: "filters" },
    h("label", { for: "fleet-filter" }, "Fleet"),
    h("select", { id: "fleet-filter", onchange: (e) => { location.hash = go(e.target.value, status); } },
      h("option", { value: "" }, "all fleets"),
      fleets.map((f) => h("option", { value: f.name, selected: f.name === fleet }, `${f.name} (${f.devices})`))),
    h("span", { class: "label", id: "status-filter" }, "Status"),
    h("div", { class: "chips", role: "group", "aria-labelledby": "status-filter" },
      ["", ...STATUSES].map((s) => link(go(fleet, s), s ? s.replace(/_/g, " ") : "all",
        { class: `chip filter ${s || "all"}`, "aria-current": s === status ? "true" : null }))));

  const rows = devices.map((dev) => h("tr", { class: deviceTone(dev.status) || (dev.problems.length ? "warn" : "") },
    h("th", { scope: "row" }, deviceLink(dev.name)),
    h("td", {}, dev.fleet),
    h("td", {}, chip(dev.status)),
    h("td", {}, dev.models.length ? dev.models.map((m) => h("div", {}, `${m.name} ${m.version}`)) : h("span", { class: "muted" }, "none")),
    h("td", {}, when(dev.last_seen_at)),
    h("td", { class: "small" }, dev.problems.length ? dev.problems.join("; ") : "")));

  return h("div", {}, h("h1", {}, "Devices"), filters, pager(offset, devices.length, total, (from) => go(fleet, status, from)),
    table(["Device", "Fleet", "Status", "Models", "Last seen", "Problems"], rows,
      offset && !devices.length ? "No devices on this page." : "No devices match."));
}

/** "Devices 501–1,000 of 10,000" with previous/next links; nothing when one page holds them all. */
function pager(offset, shown, total, href) {
  if (offset === 0 && shown >= total) return null;
  const first = shown ? offset + 1 : offset;
  return h("p", { class: "pager" },
    h("span", { class: "pager-range" }, `Devices ${num(first)}–${num(offset + shown)} of ${num(total)}`),
    offset > 0 ? link(href(Math.max(0, offset - PAGE)), "← previous", { rel: "prev" }) : null,
    offset + shown < total ? link(href(offset + PAGE), "next →", { rel: "next" }) : null);
}

export async function viewDevice(route, ctx) {
  const name = route.arg;
  const [dev, series] = await Promise.all([
    api(`/devices/${enc(name)}`), api(`/metrics/series?device=${enc(name)}&${WINDOW}`)]);
  const drifts = await Promise.all(dev.models.map((m) => modelDriftOrWhyNot(m, dev.name)));
  const agent = agentPairs(dev.agent || {}, parseTime(dev.last_seen_at));
  const tags = Object.entries(dev.tags || {});
  document.title = `${dev.name} · edgemill fleet`;

  return h("div", {},
    h("div", { class: "page-head" }, h("h1", {}, dev.name), chip(dev.status),
      h("span", { class: "muted" }, "fleet ", link(`#devices?fleet=${enc(dev.fleet)}`, dev.fleet), " · last seen ",
        when(dev.last_seen_at), " · registered ", when(dev.registered_at))),
    dev.problems.length ? h("div", { class: `callout ${deviceTone(dev.status) || "warn"}` },
      h("h2", {}, "Problems"), problemList(dev.problems)) : null,
    h("div", { class: "cols" },
      section("Models", table(["Model", "Version", "Package"], dev.models.map((m) => h("tr", {},
        h("th", { scope: "row" }, modelLink(m.name)), h("td", {}, m.version), h("td", {}, short(m.package_id)))),
      "No model loaded.")),
      section("Agent", dl([...agent,
        ["tags", tags.length ? h("span", { class: "chips" }, tags.map(([k, v]) => chip(`${k}=${v}`, "tag"))) : "none"]]))),
    dev.models.length ? section("Drift", hint(), drifts.map((d) => modelDrift(ctx, d))) : null,
    section("Performance, last hour", perSeriesCharts(ctx, series, "This device has sent no metrics in the last hour.")));
}

const WORST_FEATURES = 5;

/** The drift of a model the device runs; {model, version, unknown} where the registry does not know that
 * model or version (a device may run a package that was never uploaded), so that the page still shows. */
function modelDriftOrWhyNot(m, device) {
  return api(driftPath(m.name, m.version, device)).catch((err) => {
    if (err.status !== 404) throw err;
    return { model: m.name, version: m.version, unknown: err.message };
  });
}

/** One model's drift on this device: status, PSI over time, its worst features and the worst input and
 * prediction feature against their reference. */
function modelDrift(ctx, d) {
  const title = h("h3", { class: "series-title" }, `${d.model} ${d.version ?? ""}`);
  if (d.unknown) return h("div", { class: "series" }, title, empty(`No drift: ${d.unknown}.`));
  const head = [title, driftStatus(d), refusedNote(d)];
  if (d.status === "no_baseline") return h("div", { class: "series" }, head);
  const worst = [d.input_feature, d.prediction_feature]
    .map((key) => d.features.find((f) => f.key === key)).filter(Boolean);
  return h("div", { class: "series" }, head, referenceLine(d), psiCharts(ctx, d),
    worst.length ? h("div", { class: "charts" }, worst.map((f) => featureHistogram(f, d))) : null,
    h("h4", {}, "Worst features"), featureTable(byPsi(d.features).slice(0, WORST_FEATURES)));
}

const UNITS = [[/_bytes$/, bytes], [/_s$/, duration]];

/** A reported value as [label, text]: a number in the unit its key ends with (a duration's label drops the
 * "s": "oldest_queued_age_s" reads "oldest queued age  45 s"). */
function reported(key, value) {
  const unit = typeof value === "number" ? UNITS.find(([suffix]) => suffix.test(key)) : null;
  const text = unit ? unit[1](value) : typeof value === "number" ? num(value) : plain(value);
  return [key.replace(/_s$/, "").replace(/_/g, " "), text];
}

/** Memory the models use against the agent's budget: "340 MiB of 1 GiB (33 %)". */
function memoryPair({ used_bytes: used, budget_bytes: budget }) {
  return ["memory", budget ? `${bytes(used)} of ${bytes(budget)} (${pct(used / budget)})` : bytes(used)];
}

/** The agent's last report, one level flattened ({capture: {queued_bytes: 1024}} shows as "capture queued
 * bytes 1 KiB"), with its start as a time and its uptime at the last heartbeat. */
function agentPairs(agent, lastSeen) {
  const label = (k) => k.replace(/_/g, " ");
  const pairs = [];
  for (const [k, v] of Object.entries(agent)) {
    if (k === "started_at" && typeof v === "number") {
      const started = new Date(v * 1000);
      pairs.push(["agent started", when(started.toISOString())]);
      if (lastSeen) pairs.push(["agent uptime", duration((lastSeen - started) / 1000)]);
    } else if (k === "memory" && v && v.used_bytes != null) {
      const rest = Object.entries(v).filter(([ik]) => ik !== "used_bytes" && ik !== "budget_bytes");
      pairs.push(memoryPair(v), ...rest.map(([ik, iv]) => reported(`${k}_${ik}`, iv)));
    } else if (Array.isArray(v)) pairs.push([label(k), v.length ? `${v.length}` : "none"]);
    else if (v && typeof v === "object") pairs.push(...Object.entries(v).map(([ik, iv]) => reported(`${k}_${ik}`, iv)));
    else pairs.push(reported(k, v));
  }
  return pairs;
}
