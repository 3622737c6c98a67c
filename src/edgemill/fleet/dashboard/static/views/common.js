/* Pieces several views show: status bars and legends, rollout progress, problem lists. */

import { h, num } from "../lib/dom.js";

export const STATUSES = ["online", "degraded", "offline", "never_seen"];
export const ROLLOUT_STATES = ["updated", "assigned", "pending", "failed", "rolled_back"];
export const ACTIVE = new Set(["rolling", "paused"]);

export const deviceTone = (status) => (status === "offline" ? "bad" : status === "degraded" ? "warn" : "");

export function stackedBar(counts, order, label) {
  const sum = order.reduce((s, k) => s + (counts[k] || 0), 0);
  const text = order.map((k) => `${counts[k] || 0} ${k.replace(/_/g, " ")}`).join(", ");
  return h("div", { class: "stack", role: "img", "aria-label": `${label}: ${text}`, title: text },
    sum === 0 ? h("span", { class: "seg none", style: "width:100%" })
      : order.filter((k) => counts[k]).map((k) =>
        h("span", { class: `seg ${k}`, style: `width:${(100 * counts[k]) / sum}%` })));
}

export function legend(counts, order) {
  return h("ul", { class: "legend" }, order.map((k) =>
    h("li", {}, h("span", { class: `dot ${k}`, "aria-hidden": "true" }), `${k.replace(/_/g, " ")} `,
      h("strong", {}, num(counts[k] || 0)))));
}

export function rolloutProgress(d) {
  const targeted = Object.values(d.counts).reduce((s, n) => s + n, 0);
  return h("div", { class: "progress" },
    stackedBar(d.counts, ROLLOUT_STATES, `Deployment ${d.id} devices`),
    h("span", { class: "muted small" },
      `${d.counts.updated || 0} of ${targeted} updated · `,
      d.wave < 0 ? "not started" : `wave ${d.wave + 1} / ${d.waves}`,
      d.counts.failed ? h("span", { class: "bad-text" }, ` · ${d.counts.failed} failed`) : null));
}

export function problemList(problems) {
  return problems.length ? h("ul", { class: "problems" }, problems.map((p) => h("li", {}, p))) : null;
}
