/* The edgemill fleet dashboard: hash-routed views over /api/v1, charts drawn with the vendored uPlot.
 *
 * Every view (views/*.js) is an async function (route, ctx) -> DOM node: it reads the API, builds the
 * node, and asks for charts with chart(ctx, ...), drawn once the node is on the page (other drawings push
 * a function onto ctx.mounts, called then, which returns the function that undoes it). This module signs
 * in, routes, shows errors, and rebuilds the current view every 5 s while the tab is visible. */

import { ApiError, api, session } from "./lib/api.js";
import { destroyCharts, drawCharts } from "./lib/charts.js";
import { $, empty, h } from "./lib/dom.js";
import { viewAlerts } from "./views/alerts.js";
import { viewCapture, viewCaptures } from "./views/captures.js";
import { viewDeployment, viewDeployments } from "./views/deployments.js";
import { viewDevice, viewDevices } from "./views/devices.js";
import { viewModel, viewModels } from "./views/models.js";
import { viewAudit, viewKeys } from "./views/operators.js";
import { viewOverview } from "./views/overview.js";

const REFRESH_MS = 5000;

const ROUTES = {
  overview: { view: viewOverview, nav: "overview", title: "Overview" },
  devices: { view: viewDevices, nav: "devices", title: "Devices" },
  device: { view: viewDevice, nav: "devices", title: "Device", arg: true },
  models: { view: viewModels, nav: "models", title: "Models" },
  model: { view: viewModel, nav: "models", title: "Model", arg: true },
  captures: { view: viewCaptures, nav: "captures", title: "Captures" },
  capture: { view: viewCapture, nav: "captures", title: "Capture", arg: true },
  deployments: { view: viewDeployments, nav: "deployments", title: "Deployments" },
  deployment: { view: viewDeployment, nav: "deployments", title: "Deployment", arg: true },
  alerts: { view: viewAlerts, nav: "alerts", title: "Alerts" },
  audit: { view: viewAudit, nav: "audit", title: "Audit" },
  keys: { view: viewKeys, nav: "keys", title: "Operator keys", role: "admin", everyFleet: true },
};

// Each role can do what the ones before it can (the server's auth.ROLES); the API enforces it, the
// dashboard only leaves out what the signed-in key may not do.
const ROLES = ["viewer", "deployer", "admin"];
const can = (whoami, role) => Boolean(whoami) && ROLES.indexOf(whoami.role) >= ROLES.indexOf(role);
// A key limited to some fleets (whoami.fleets) sees only theirs; what every fleet shares (keys, new fleets,
// stages, drift references) needs a key for every fleet.
const everyFleet = (whoami) => Boolean(whoami) && whoami.fleets == null;

const state = {
  renderSeq: 0,  // a render that a newer one overtook drops its result
  inFlight: false,
  page: null,  // the route's name and argument last rendered, without its query
  whoami: null,  // the signed-in key: {name, role, expires_at}, read again with every render
  unmounts: [],  // what undoes the drawings of ctx.mounts on the page
};

/** Take the page's charts and other drawings down (before it is replaced or hidden). */
function clearDrawings() {
  destroyCharts();
  for (const undo of state.unmounts.splice(0)) undo();
}

/** Make the drawings a view asked for, now that its node is on the page. */
function drawAll(ctx) {
  drawCharts(ctx.charts);
  for (const mount of ctx.mounts) {
    try {
      const undo = mount();
      if (typeof undo === "function") state.unmounts.push(undo);
    } catch (err) {
      console.error(err);  // a bug in a drawing: the rest of the page still shows
    }
  }
}

// --- errors, sign-in, confirmation -------------------------------------------------------------------

function showBanner(err) {
  const b = err.body || { message: String(err.message || err) };
  // The server's message already ends with its fix; shown once, apart, it reads better.
  const suffix = b.fix ? `. Fix: ${b.fix}` : null;
  const message = suffix && b.message.endsWith(suffix) ? b.message.slice(0, -suffix.length) : b.message;
  $("banner").replaceChildren(
    h("strong", {}, message),
    b.fix ? h("span", { class: "fix" }, ` ${b.fix}`) : null,
    h("button", { type: "button", class: "link", "aria-label": "Dismiss", onclick: hideBanner }, "×"));
  $("banner").hidden = false;
}

function hideBanner() { $("banner").hidden = true; }

/** The signed-in key in the header, and only the sections its role may open in the navigation. */
function showWhoami(whoami) {
  const fleets = whoami?.fleets ? ` · ${whoami.fleets.join(", ")}` : "";
  $("whoami").textContent = whoami ? `${whoami.name} · ${whoami.role}${fleets}` : "";
  $("whoami").hidden = !whoami;
  for (const a of document.querySelectorAll("[data-role]")) {
    a.hidden = !can(whoami, a.dataset.role) || (a.hasAttribute("data-every-fleet") && !everyFleet(whoami));
  }
}

function showLogin(message) {
  clearDrawings();
  $("main").replaceChildren();
  $("main").hidden = true;
  $("signout").hidden = true;
  hideBanner();
  $("login-message").textContent = message || "";
  $("login-message").hidden = !message;
  $("login").hidden = false;
  $("login-key").focus();
}

function signIn(key) {
  session.set(key);
  $("login").hidden = true;
  $("main").hidden = false;
  $("signout").hidden = false;
  render();
}

function signOut(message) {
  session.set(null);
  state.whoami = null;
  showWhoami(null);
  showLogin(message);
}

/** A failed call: a refused key asks for another one; anything else goes to the banner. */
function failed(err) {
  if (err.status === 401) signOut(err.message);
  else {
    if (!(err instanceof ApiError)) console.error(err);  // a bug here, not an answer from the server
    showBanner(err);
  }
}

/** A key handed over in the address (#key=...) is taken and removed, so it is not left in history. */
function takeKeyFromHash() {
  const m = location.hash.match(/^#(?:(.*?)[?&])?key=([^&]*)(.*)$/);
  if (!m) return null;
  const before = m[1] || "";
  const after = m[3].replace(/^&/, "");
  const rest = after ? `${before}${before.includes("?") ? "&" : "?"}${after}` : before;
  history.replaceState(null, "", `${location.pathname}${location.search}#${rest || "overview"}`);
  return decodeURIComponent(m[2]);
}

function confirmAction(title, text, okLabel) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

/** An operator action from a view: confirm, call, then show the view as it is now. */
async function confirmThen(button, title, text, okLabel, call) {
  if (!(await confirmAction(title, text, okLabel))) return;
  button.disabled = true;
  try {
    await call();
    await render();
  } catch (err) {
    failed(err);
    button.disabled = false;
  }
}

/** An operator action from a view that needs no confirmation (a form's Save): call, then show the view as
 * it is now, in place. A failure goes to the banner and the view stays as it is (what was typed with
 * it); true when the call succeeded. */
async function act(button, call) {
  button.disabled = true;
  try {
    await call();
  } catch (err) {
    failed(err);
    button.disabled = false;
    return false;
  }
  await render({ quiet: true });
  return true;
}

// --- routing and refresh ------------------------------------------------------------------------------

function parseRoute() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const [name, ...rest] = path.split("/");
  const known = ROUTES[name] && Boolean(ROUTES[name].arg) === rest.length > 0;
  return { name: known ? name : "overview", arg: rest.length ? decodeURIComponent(rest.join("/")) : null,
    query: new URLSearchParams(query || "") };
}

const pageOf = (route) => `${route.name}/${route.arg ?? ""}`;

async function render({ quiet = false } = {}) {
  if (!session.key) { showLogin(); return; }
  const seq = ++state.renderSeq;
  const route = parseRoute();
  const spec = ROUTES[route.name];
  state.page = pageOf(route);
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === spec.nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const main = $("main");
  main.setAttribute("aria-busy", "true");
  state.inFlight = true;
  const ctx = { charts: [], mounts: [], confirmThen, act, failed, can: (role) => can(state.whoami, role),
    get everyFleet() { return everyFleet(state.whoami); } };
  try {
    document.title = `${spec.title} · edgemill fleet`;
    state.whoami = await api("/whoami");  // a revoked or expired key signs out here (401)
    showWhoami(state.whoami);
    if (spec.role && !ctx.can(spec.role)) {
      throw new ApiError(403, { message: `This page needs the ${spec.role} role; the key ${state.whoami.name} is a ${state.whoami.role}.` });
    }
    if (spec.everyFleet && !ctx.everyFleet) {
      throw new ApiError(403, { message: `This page needs a key for every fleet; the key ${state.whoami.name} is limited to ${state.whoami.fleets.join(", ")}.` });
    }
    const node = await spec.view(route, ctx);
    if (seq !== state.renderSeq) return;
    const y = window.scrollY;
    clearDrawings();
    main.replaceChildren(node);
    drawAll(ctx);
    if (quiet) window.scrollTo(0, y);
    else main.focus({ preventScroll: true });
    hideBanner();
    $("refresh").textContent = document.hidden ? "refresh paused" : `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (seq !== state.renderSeq) return;
    failed(err);
    if (!quiet && err.status !== 401) {
      clearDrawings();
      main.replaceChildren(h("h1", {}, spec.title), empty("This view could not be loaded."));
    }
  } finally {
    if (seq === state.renderSeq) {
      main.setAttribute("aria-busy", "false");
      state.inFlight = false;
    }
  }
}

/** Auto-refresh skips a beat rather than pull a form control or dialog from under the operator. */
function shouldRefresh() {
  if (document.hidden || !session.key || state.inFlight || $("confirm").open) return false;
  const active = document.activeElement;
  return !(active && $("main").contains(active) && /^(SELECT|INPUT|TEXTAREA)$/.test(active.tagName));
}

function start() {
  const handed = takeKeyFromHash();
  if (handed) session.set(handed);
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("login-key").value.trim();
    $("login-key").value = "";
    if (key) signIn(key);
  });
  $("signout").addEventListener("click", () => signOut());
  $("skip").addEventListener("click", (e) => {
    e.preventDefault();  // the address is the route: a fragment link to the content would change it
    ($("login").hidden ? $("main") : $("login-key")).focus();
  });
  window.addEventListener("hashchange", () => {
    const key = takeKeyFromHash();
    if (key) { signIn(key); return; }
    // Another page opens at its top; the same page with other choices (a filter, a feature) stays in place.
    const samePage = pageOf(parseRoute()) === state.page;
    if (!samePage) window.scrollTo(0, 0);
    render({ quiet: samePage });
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) $("refresh").textContent = "refresh paused";
    else if (shouldRefresh()) render({ quiet: true });
  });
  setInterval(() => { if (shouldRefresh()) render({ quiet: true }); }, REFRESH_MS);
  if (session.key) signIn(session.key); else showLogin();
}

start();
