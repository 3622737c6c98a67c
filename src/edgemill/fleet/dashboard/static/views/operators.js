/* Operator keys (admins: create, list, revoke) and the audit trail of state-changing requests. */

import { chip, empty, enc, h, table, when } from "../lib/dom.js";
import { api, apiPage } from "../lib/api.js";

const ROLES = ["viewer", "deployer", "admin"];
const ROLE_TEXT = {
  viewer: "reads everything, changes nothing",
  deployer: "also pushes, stages, deploys, pauses, resumes, rolls back, labels",
  admin: "also manages keys, fleets, devices, tokens and alert rules",
};
const EXPIRIES = [["never", null], ["1 day", 86400], ["30 days", 30 * 86400], ["90 days", 90 * 86400], ["1 year", 365 * 86400]];
const AUDIT_PAGE = 100;

// The secret of the key created last, shown once on the page that made it (it is never readable again).
let created = null;

export async function viewKeys(route, ctx) {
  const [keys, fleets] = await Promise.all([api("/operator-keys"), api("/fleets")]);
  const rows = keys.map((k) => {
    const state = k.active ? "active" : k.revoked_at ? "revoked" : "expired";
    const revoke = k.active ? h("button", {
      type: "button", class: "danger small-button",
      onclick: (e) => ctx.confirmThen(e.currentTarget, `Revoke the key ${k.name}?`,
        "Every request made with it is refused from the next one on. This cannot be undone.", "Revoke",
        () => api(`/operator-keys/${enc(k.name)}`, { method: "DELETE" })),
    }, "Revoke") : null;
    return h("tr", { class: k.active ? "" : "muted" },
      h("th", { scope: "row" }, k.name),
      h("td", {}, chip(k.role, `role-${k.role}`)),
      h("td", {}, chip(state, state === "active" ? "online" : "offline")),
      h("td", {}, when(k.created_at)), h("td", {}, k.created_by || "–"),
      h("td", {}, k.expires_at ? when(k.expires_at) : "never"),
      h("td", {}, k.fleets ? k.fleets.join(", ") : h("span", { class: "muted" }, "every fleet")),
      h("td", {}, revoke));
  });

  const name = h("input", { id: "key-name", name: "name", required: true, pattern: "[A-Za-z0-9._\\-]+", autocomplete: "off" });
  const role = h("select", { id: "key-role", name: "role" },
    ROLES.map((r) => h("option", { value: r, selected: r === "viewer" }, `${r}: ${ROLE_TEXT[r]}`)));
  const expiry = h("select", { id: "key-expiry", name: "expiry" },
    EXPIRIES.map(([text, s]) => h("option", { value: s == null ? "" : String(s) }, text)));
  // None ticked: every fleet. Ticked: the key sees and changes only those fleets' devices, deployments,
  // captures and alert rules.
  const fleetBoxes = fleets.map((f) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: "fleet", value: f.name }), ` ${f.name}`));
  const create = async (e) => {
    e.preventDefault();
    const button = e.currentTarget.querySelector("button[type=submit]");
    const body = { name: name.value.trim(), role: role.value };
    if (expiry.value) body.expires_in_s = Number(expiry.value);
    const limited = fleetBoxes.map((l) => l.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    if (limited.length) body.fleets = limited;
    await ctx.act(button, async () => { created = await api("/operator-keys", { method: "POST", body }); });
  };
  const shown = created;
  created = null;
  return h("div", {}, h("h1", {}, "Operator keys"),
    shown ? h("div", { class: "callout", role: "status" },
      h("h2", {}, `Key ${shown.name} (${shown.role}${shown.fleets ? `, ${shown.fleets.join(", ")}` : ""}) created`),
      h("p", {}, "Copy it now: it is shown this once, and the server keeps only its hash."),
      h("code", { class: "secret", id: "new-key" }, shown.key)) : null,
    table(["Name", "Role", "State", "Created", "By", "Expires", "Fleets", ""], rows, "No keys."),
    h("section", { class: "panel" }, h("h2", {}, "New key"),
      h("form", { class: "key-form", onsubmit: create },
        h("div", { class: "field" }, h("label", { for: "key-name" }, "Name"), name),
        h("div", { class: "field" }, h("label", { for: "key-role" }, "Role"), role),
        h("div", { class: "field" }, h("label", { for: "key-expiry" }, "Expires"), expiry),
        fleets.length ? h("fieldset", { class: "field", id: "key-fleets" },
          h("legend", {}, "Only these fleets (none ticked: every fleet)"), fleetBoxes) : null,
        h("div", { class: "actions" }, h("button", { type: "submit" }, "Create key")))));
}

export async function viewAudit(route) {
  const key = route.query.get("key");
  const path = route.query.get("path");
  const fleet = route.query.get("fleet");
  const before = route.query.get("before");
  const params = new URLSearchParams({ limit: String(AUDIT_PAGE) });
  if (key) params.set("key", key);
  if (path) params.set("path", path);
  if (fleet) params.set("fleet", fleet);
  if (before) params.set("before_id", before);
  const { items, total } = await apiPage(`/audit?${params}`);
  const href = (extra) => {
    const q = new URLSearchParams();
    if (key) q.set("key", key);
    if (path) q.set("path", path);
    if (fleet) q.set("fleet", fleet);
    for (const [k, v] of Object.entries(extra)) if (v != null) q.set(k, v);
    const text = q.toString();
    return `#audit${text ? `?${text}` : ""}`;
  };
  const rows = items.map((e) => h("tr", { class: e.outcome === "ok" ? "" : e.outcome === "failed" ? "bad" : "warn" },
    h("td", {}, when(e.at)),
    h("th", { scope: "row" }, e.key ? h("a", { href: href({ key: e.key }) }, e.key) : h("span", { class: "muted" }, "no valid key")),
    h("td", {}, e.role || "–"), h("td", {}, e.remote || "–"),
    h("td", {}, h("code", {}, `${e.method} ${e.path}`)),
    h("td", {}, e.fleet ? h("a", { href: href({ fleet: e.fleet }) }, e.fleet) : "–"),
    h("td", {}, String(e.status)), h("td", {}, chip(e.outcome, e.outcome === "ok" ? "online" : "degraded"))));
  const last = items.length ? items[items.length - 1].id : null;
  return h("div", {},
    h("div", { class: "page-head" }, h("h1", {}, "Audit"),
      h("span", { class: "muted" }, `${total} state-changing request${total === 1 ? "" : "s"}`,
        key ? [" by ", h("code", {}, key)] : "", path ? [" to ", h("code", {}, path)] : "",
        fleet ? [" in fleet ", h("code", {}, fleet)] : "",
        key || path || fleet ? [" · ", h("a", { href: "#audit" }, "all")] : "")),
    items.length ? table(["When", "Key", "Role", "From", "Request", "Fleet", "Status", "Outcome"], rows)
      : empty("Nothing has been changed yet."),
    items.length === AUDIT_PAGE && last != null
      ? h("p", {}, h("a", { href: href({ before: String(last) }) }, "Older →")) : null);
}
