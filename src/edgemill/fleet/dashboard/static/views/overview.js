/* Overview: fleet health, what needs attention, rollouts, alerts, traffic. */

import { axisMs, chip, deploymentLink, deviceLink, empty, enc, h, link, metricValue, modelLink, ms, num, pct, psi, psiTone,
  psiWord, section, when } from "../lib/dom.js";
import { api } from "../lib/api.js";
import { WINDOW, align, chart, seriesLabel, trafficChart } from "../lib/charts.js";
import { STATUSES, deviceTone, legend, problemList, rolloutProgress, stackedBar } from "./common.js";
import { worstPsi } from "./drift.js";

/** One OverviewOut.drifting entry: a model version drifting as a whole, or on one device. */
function driftingItem(d) {
  const worst = worstPsi(d.input_psi, d.prediction_psi);
  const modelPage = `#model/${enc(d.model)}${d.version ? `?version=${enc(d.version)}` : ""}`;
  const scores = [d.input_psi != null && `input PSI ${psi(d.input_psi)}`,
    d.prediction_psi != null && `prediction PSI ${psi(d.prediction_psi)}`].filter(Boolean).join(" · ");
  return h("li", { class: `item ${psiTone(worst) || "warn"}` },
    h("div", { class: "item-head" },
      h("span", {}, link(modelPage, [d.model, " ", d.version ?? ""]), d.device ? [" on ", deviceLink(d.device)] : null),
      chip(`${psiWord(worst)} drift`, psiTone(worst) || "warn")),
    h("p", { class: "small" }, scores, d.feature ? [" · worst feature ", h("code", {}, d.feature)] : null),
    d.reason ? h("p", { class: "small muted" }, d.reason) : null);
}

export async function viewOverview(route, ctx) {
  const [ov, series] = await Promise.all([api("/overview"), api(`/metrics/series?${WINDOW}`)]);
  const d = ov.devices;
  const tile = (label, value, tone) => h("div", { class: `tile ${tone || ""}` },
    h("span", { class: "big" }, num(value)), h("span", { class: "label" }, label));

  const health = section("Fleet health",
    h("div", { class: "tiles" },
      tile("devices", d.total), tile("online", d.online, "ok"), tile("degraded", d.degraded, d.degraded ? "warn" : ""),
      tile("offline", d.offline, d.offline ? "bad" : ""), tile("never seen", d.never_seen)),
    stackedBar(d, STATUSES, "Devices by status"), legend(d, STATUSES),
    h("p", { class: "muted small" },
      `${num(ov.fleets)} fleets · ${num(ov.models)} models · ${num(ov.versions)} versions · ${num(ov.captures)} captures`));

  const problemDevices = ov.problem_devices.map((dev) => h("li", { class: `item ${deviceTone(dev.status) || "warn"}` },
    h("div", { class: "item-head" }, deviceLink(dev.name), chip(dev.status), h("span", { class: "muted small" }, dev.fleet)),
    dev.problems.length ? problemList(dev.problems)
      : h("p", { class: "small" }, "last seen ", when(dev.last_seen_at))));
  const problemModels = ov.problem_models.map((m) => h("li", { class: "item bad" },
    h("div", { class: "item-head" }, modelLink(m.name),
      m.error_rate != null ? h("span", { class: "small" }, `errors ${pct(m.error_rate)}`) : null,
      m.p95_ms != null ? h("span", { class: "small" }, `p95 ${ms(m.p95_ms)}`) : null),
    m.reason ? h("p", { class: "small" }, m.reason) : null));

  // The overview lists the first problem devices by name; the device list pages through the rest.
  const moreDevices = d.degraded + d.offline > problemDevices.length
    ? h("p", { class: "muted small more" }, `${num(problemDevices.length)} of ${num(d.degraded + d.offline)} shown · all `,
      link("#devices?status=degraded", "degraded"), " · all ", link("#devices?status=offline", "offline"))
    : null;
  const attention = section("Needs attention", h("div", { class: "cols" },
    h("div", {}, h("h3", {}, "Devices"),
      problemDevices.length ? h("ul", { class: "items" }, problemDevices) : empty("All devices healthy."), moreDevices),
    h("div", {}, h("h3", {}, "Models"),
      problemModels.length ? h("ul", { class: "items" }, problemModels) : empty("All models healthy.")),
    h("div", {}, h("h3", {}, "Drift"),
      ov.drifting.length ? h("ul", { class: "items" }, ov.drifting.map(driftingItem)) : empty("No drift reported."))));

  const rollouts = section("Active rollouts", ov.active_deployments.length
    ? h("ul", { class: "items" }, ov.active_deployments.map((dep) => h("li", { class: "item" },
      h("div", { class: "item-head" }, deploymentLink(dep.id), h("span", {}, `${dep.model} ${dep.version} → ${dep.fleet}`),
        chip(dep.state)),
      rolloutProgress(dep))))
    : empty("No rollout in progress."));

  const alerts = section("Firing alerts", ov.firing_alerts.length
    ? h("ul", { class: "items" }, ov.firing_alerts.map((a) => h("li", { class: "item bad" },
      h("div", { class: "item-head" }, h("a", { href: "#alerts", class: "strong" }, a.rule), chip(a.state),
        h("span", { class: "small" }, `${metricValue(a.metric, a.value)} (threshold ${metricValue(a.metric, a.threshold)})`),
        h("span", { class: "muted small" }, "since ", when(a.started_at))),
      h("p", { class: "small" }, a.message))))
    : empty("No alerts firing."));

  const { x, lines } = align(series, "p95_ms");
  const traffic = section("Traffic, last hour", h("div", { class: "charts" },
    trafficChart(ctx, "Requests and error rate, whole fleet", series),
    chart(ctx, "p95 latency by model", x, series.map((s, i) => ({ label: seriesLabel(s.key), values: lines[i], scale: "ms", fmt: ms, axisFmt: axisMs })))));

  return h("div", {}, h("h1", {}, "Overview"), health, attention, rollouts, alerts, traffic);
}
