/* Devices: the list with filters, and one device with its models, agent report and charts. */

import { chip, deviceLink, dl, enc, h, link, modelLink, num, plain, section, short, table, when } from "../lib/dom.js";
import { api, apiPage } from "../lib/api.js";
import { WINDOW, perSeriesCharts } from "../lib/charts.js";
import { STATUSES, deviceTone, problemList } from "./common.js";

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
  const agent = agentPairs(dev.agent || {});
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
    section("Performance, last hour", perSeriesCharts(ctx, series, "This device has sent no metrics in the last hour.")));
}

/** The agent's last report, one level flattened: {memory: {rss_mb: 80}} shows as "memory rss mb". */
function agentPairs(agent) {
  const label = (k) => k.replace(/_/g, " ");
  const pairs = [];
  for (const [k, v] of Object.entries(agent)) {
    if (k === "started_at" && typeof v === "number") pairs.push(["agent started", when(new Date(v * 1000).toISOString())]);
    else if (Array.isArray(v)) pairs.push([label(k), v.length ? `${v.length}` : "none"]);
    else if (v && typeof v === "object") {
      const inner = Object.entries(v);
      if (!inner.length) continue;
      for (const [ik, iv] of inner) pairs.push([`${label(k)} ${label(ik)}`, plain(iv)]);
    } else pairs.push([label(k), plain(v)]);
  }
  return pairs;
}
