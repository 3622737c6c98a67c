/* Deployments: the list, and one deployment with its waves, events and actions. */

import { chip, deploymentLink, deviceLink, dl, duration, empty, enc, h, modelLink, ms, num, pct, section, table, when } from "../lib/dom.js";
import { api } from "../lib/api.js";
import { ACTIVE, ROLLOUT_STATES, legend, rolloutProgress } from "./common.js";

export async function viewDeployments() {
  const deployments = await api("/deployments");
  const sorted = [...deployments].sort((a, b) => (ACTIVE.has(b.state) - ACTIVE.has(a.state)) || b.id - a.id);
  const rows = sorted.map((d) => h("tr", { class: d.state === "rolled_back" || d.counts.failed ? "bad" : d.state === "paused" ? "warn" : "" },
    h("th", { scope: "row" }, deploymentLink(d.id)),
    h("td", {}, modelLink(d.model), ` ${d.version}`),
    h("td", {}, d.fleet),
    h("td", {}, chip(d.state)),
    h("td", { class: "wide" }, rolloutProgress(d)),
    h("td", {}, when(d.updated_at))));
  return h("div", {}, h("h1", {}, "Deployments"),
    table(["#", "Model", "Fleet", "State", "Progress", "Updated"], rows, "No deployments yet."));
}

export async function viewDeployment(route, ctx) {
  const id = route.arg;
  const d = await api(`/deployments/${enc(id)}`);
  document.title = `Deployment ${d.id} · edgemill fleet`;
  const s = d.strategy;
  const g = s.gates;

  // Each action asks for confirmation first (ctx.confirmThen), then re-reads the view.
  const act = (action, label, text, enabled) => h("button", {
    type: "button", class: action === "rollback" ? "danger" : "", disabled: !enabled,
    onclick: (e) => ctx.confirmThen(e.currentTarget, `${label} deployment #${d.id}?`, text, label,
      () => api(`/deployments/${enc(d.id)}/${action}`, { method: "POST" })),
  }, label);

  const waves = new Map();
  for (const dev of d.devices) {
    // The API counts waves from 0 (the canary); people count from 1.
    const k = dev.wave == null ? "not in a wave yet" : `wave ${dev.wave + 1}${dev.wave === 0 ? " · canary" : ""}`;
    if (!waves.has(k)) waves.set(k, []);
    waves.get(k).push(dev);
  }

  return h("div", {},
    h("div", { class: "page-head" }, h("h1", {}, `Deployment #${d.id}`), chip(d.state),
      h("span", { class: "muted" }, modelLink(d.model), ` ${d.version} → fleet ${d.fleet}`,
        Object.keys(d.tags).length ? ` (tags ${Object.entries(d.tags).map(([k, v]) => `${k}=${v}`).join(", ")})` : "",
        " · created ", when(d.created_at), " · updated ", when(d.updated_at), " · ",
        h("a", { href: `#audit?path=${enc(`/api/v1/deployments/${d.id}`)}` }, "audit trail"))),
    ctx.can("deployer") ? h("div", { class: "actions" },
      act("pause", "Pause", "Devices not yet updated wait until the rollout is resumed.", d.state === "rolling"),
      act("resume", "Resume", "The rollout continues with its next wave once the gates pass.", d.state === "paused"),
      act("rollback", "Roll back", "Every updated device is ordered back to the version it ran before.",
        d.state !== "rolled_back" && d.state !== "superseded")) : null,
    d.reason && (d.state === "rolled_back" || d.state === "paused")
      ? h("div", { class: `callout ${d.state === "rolled_back" ? "bad" : "warn"}` },
        h("h2", {}, d.state === "paused" ? "Paused" : "Rolled back"), h("p", {}, d.reason))
      : d.reason ? h("p", { class: "muted" }, `Last decision: ${d.reason}`) : null,
    section("Progress", rolloutProgress(d), legend(d.counts, ROLLOUT_STATES)),
    h("div", { class: "cols" },
      section("Strategy", dl([
        ["canary", `${s.canary_percent} % of devices`],
        ["later waves", s.batch_size ? `${s.batch_size} devices each` : "all the rest at once"],
        ["bake time", duration(s.bake_time_s)],
        ["max error rate", pct(g.max_error_rate)],
        ["max p95", g.max_p95_ms != null ? ms(g.max_p95_ms) : "no limit"],
        ["max failed devices", num(g.max_failed_devices)],
        ["min requests", num(g.min_requests)],
      ])),
      section("Events, newest first", d.events.length
        ? h("ol", { class: "timeline" }, [...d.events].reverse().map((e) => h("li", {},
          when(e.at), " ", chip(e.kind, "kind"), " ", h("span", {}, e.message))))
        : empty("No events yet."))),
    section("Devices by wave", d.devices.length ? h("div", { class: "waves" }, [...waves].map(([k, devs]) =>
      h("div", { class: "wave" }, h("h3", {}, k), h("ul", { class: "items" }, devs.map((dev) =>
        h("li", { class: `item ${dev.state === "failed" ? "bad" : dev.state === "rolled_back" ? "warn" : ""}` },
          h("div", { class: "item-head" }, deviceLink(dev.device), chip(dev.state)),
          h("div", { class: "small muted" }, dev.previous_version ? `from ${dev.previous_version}` : null,
            dev.previous_version && dev.updated_at ? " · " : null, dev.updated_at ? ["updated ", when(dev.updated_at)] : null),
          dev.reason ? h("p", { class: "small" }, dev.reason) : null))))))
      : empty("No device targeted.")));
}
