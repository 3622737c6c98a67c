/* Alerts, firing first, with webhook delivery state; and the rules. */

import { METRICS, chip, duration, h, metricValue, num, parseTime, section, table, when } from "../lib/dom.js";
import { api } from "../lib/api.js";

/** Delivery state of an alert's webhook: deliveries, delivered, attempts, gave_up, last_error. */
function webhookState(w) {
  if (!w || !w.deliveries) return h("span", { class: "muted" }, "no webhook");
  const tries = `${num(w.attempts)} attempt${w.attempts === 1 ? "" : "s"}`;
  const error = w.last_error ? h("div", { class: "small" }, w.last_error) : null;
  if (w.delivered >= w.deliveries) return h("span", {}, chip("delivered", "ok"), " ", h("span", { class: "small muted" }, tries));
  if (w.gave_up) return h("span", {}, chip("gave up", "bad"), " ", h("span", { class: "small muted" }, tries), error);
  return h("span", {}, chip(w.attempts ? "retrying" : "pending", "warn"), " ", h("span", { class: "small muted" }, tries), error);
}

export async function viewAlerts() {
  const [alerts, rules] = await Promise.all([api("/alerts"), api("/alert-rules")]);
  const sorted = [...alerts].sort((a, b) => ((b.state === "firing") - (a.state === "firing"))
    || parseTime(b.started_at) - parseTime(a.started_at));
  const rows = sorted.map((a) => h("tr", { class: a.state === "firing" ? "bad" : "" },
    h("td", {}, chip(a.state)),
    h("th", { scope: "row" }, a.rule),
    h("td", {}, `${metricValue(a.metric, a.value)} / ${metricValue(a.metric, a.threshold)}`),
    h("td", {}, when(a.started_at)),
    h("td", {}, when(a.resolved_at, a.state === "firing" ? "still firing" : "–")),
    h("td", {}, webhookState(a.webhook)),
    h("td", { class: "small" }, a.message)));
  const scope = (r) => [r.fleet && `fleet ${r.fleet}`, r.model && `model ${r.model}`, r.device && `device ${r.device}`]
    .filter(Boolean).join(", ") || "whole fleet";
  const ruleRows = rules.map((r) => h("tr", {},
    h("th", { scope: "row" }, r.name),
    h("td", {}, METRICS[r.metric] || r.metric, r.feature ? [" of ", h("code", {}, r.feature)] : null,
      ` ${r.op} ${metricValue(r.metric, r.threshold)} over ${duration(r.window_s)}`),
    h("td", {}, scope(r)),
    h("td", { class: "small" }, r.webhook_url ?? h("span", { class: "muted" }, "none")),
    h("td", {}, when(r.created_at))));
  return h("div", {}, h("h1", {}, "Alerts"),
    section("Alerts", table(["State", "Rule", "Value / threshold", "Started", "Resolved", "Webhook", "Message"], rows,
      "No alert has fired.")),
    section("Rules", table(["Rule", "Condition", "Scope", "Webhook", "Created"], ruleRows, "No alert rules.")));
}
