/* Captures: the list (filters kept in the address, thumbnails, paging), and one capture with its
 * inputs, outputs, the model's answer, auxiliary blobs and the label form. */

import { ApiError, api } from "../lib/api.js";
import { bytes, chip, deviceLink, empty, enc, h, link, modelLink, num, pct, section, table, when } from "../lib/dom.js";
import { imageCanvas, shapeText, tensorFigure, value } from "../lib/tensor.js";

const PAGE = 25;
const SINCE = { "1h": ["last hour", 3600], "1d": ["last day", 86400], "7d": ["last week", 7 * 86400] };
const LABEL_STATES = [["", "all"], ["true", "labeled"], ["false", "unlabeled"]];
const FILTERS = ["fleet", "device", "model", "version", "labeled", "since"];
const THUMB_SIDE = 48;

const viewPath = (device, id) => `/captures/${enc(device)}/${enc(id)}/view`;
const labelPath = (device, id) => `/captures/${enc(device)}/${enc(id)}/label`;
export const captureHref = (device, id) => `#capture/${enc(device)}/${enc(id)}`;

/** The list's address with these filters (and page), the empty ones left out. */
export function capturesHref(choices) {
  const q = new URLSearchParams();
  for (const k of [...FILTERS, "offset"]) if (choices[k]) q.set(k, choices[k]);
  const query = q.toString();
  return `#captures${query ? `?${query}` : ""}`;
}

let lastList = "#captures";  // the list as it was last shown: the capture page's way back

// --- capture views, kept by device/id ---------------------------------------------------------------
// A capture's tensors never change: its thumbnail is read once, not at every refresh of the list.

const VIEWS_KEPT = 200;
const views = new Map();  // "device/id" -> {promise, value}

function keep(key, entry) {
  views.delete(key);
  views.set(key, entry);
  while (views.size > VIEWS_KEPT) views.delete(views.keys().next().value);
}

function cachedView(device, id) {
  const key = `${device}/${id}`;
  let entry = views.get(key);
  if (!entry) {
    entry = { value: null };
    entry.promise = api(viewPath(device, id))
      .catch((err) => {
        if (err.status === 0) views.delete(key);  // the server was out of reach: ask again next time
        return { failed: err.message };
      })
      .then((v) => { entry.value = v; return v; });
    keep(key, entry);
  }
  return entry;
}

// --- the list ---------------------------------------------------------------------------------------

function choicesOf(query) {
  const choices = Object.fromEntries(FILTERS.map((k) => [k, (query.get(k) || "").trim()]));
  if (!["true", "false"].includes(choices.labeled)) choices.labeled = "";
  if (!SINCE[choices.since]) choices.since = "";
  return choices;
}

export async function viewCaptures(route) {
  const choices = choicesOf(route.query);
  const offset = Math.max(0, Number.parseInt(route.query.get("offset") || "0", 10) || 0);
  const q = new URLSearchParams();
  for (const k of ["fleet", "device", "model", "version", "labeled"]) if (choices[k]) q.set(k, choices[k]);
  if (choices.since) q.set("since", Math.floor(Date.now() / 1000) - SINCE[choices.since][1]);
  q.set("offset", offset);
  q.set("limit", PAGE + 1);  // one more than shown: whether there is a next page
  const [found, fleets, models] = await Promise.all([api(`/captures?${q}`), api("/fleets"), api("/models")]);
  const captures = found.slice(0, PAGE);
  const more = found.length > PAGE;
  lastList = capturesHref({ ...choices, offset });
  const go = (change) => { location.hash = capturesHref({ ...choices, ...change, offset: 0 }); };

  // Each label with its control, so that a narrow window wraps between filters, not inside one.
  const group = (...children) => h("span", { class: "filter" }, ...children);
  const text = (key, label, attrs) => group(
    h("label", { for: `captures-${key}` }, label),
    h("input", { id: `captures-${key}`, type: "text", value: choices[key], spellcheck: "false", autocomplete: "off",
      placeholder: "any", ...attrs, onchange: (e) => go({ [key]: e.target.value.trim() }) }));
  const filters = h("div", { class: "filters" },
    group(h("label", { for: "captures-fleet" }, "Fleet"),
      h("select", { id: "captures-fleet", onchange: (e) => go({ fleet: e.target.value }) },
        h("option", { value: "" }, "all fleets"),
        fleets.map((f) => h("option", { value: f.name, selected: f.name === choices.fleet }, f.name)),
        choices.fleet && !fleets.some((f) => f.name === choices.fleet)
          ? h("option", { value: choices.fleet, selected: true }, choices.fleet) : null)),
    text("device", "Device"),
    text("model", "Model", { list: "captures-models" }),
    h("datalist", { id: "captures-models" }, models.map((m) => h("option", { value: m.name }))),
    text("version", "Version", { class: "short" }),
    group(h("label", { for: "captures-since" }, "Predicted"),
      h("select", { id: "captures-since", onchange: (e) => go({ since: e.target.value }) },
        h("option", { value: "" }, "any time"),
        Object.entries(SINCE).map(([k, [label]]) => h("option", { value: k, selected: k === choices.since }, label)))),
    group(h("span", { class: "label", id: "captures-labeled" }, "Label"),
      h("span", { class: "chips", role: "group", "aria-labelledby": "captures-labeled" },
        LABEL_STATES.map(([k, label]) => link(capturesHref({ ...choices, labeled: k }), label,
          { class: `chip filter label-${label}`, "aria-current": k === choices.labeled ? "true" : null })))),
    FILTERS.some((k) => choices[k]) ? link("#captures", "clear filters", { class: "small" }) : null);

  const rows = captures.map((c) => h("tr", {
    class: "clickable",
    onclick: (e) => { if (!e.target.closest("a")) location.hash = captureHref(c.device, c.capture_id); },
  },
  thumbCell(c),
  h("td", {}, link(captureHref(c.device, c.capture_id), h("code", { title: c.capture_id }, shortId(c.capture_id)))),
  h("td", {}, deviceLink(c.device)),
  h("td", {}, c.model, c.version ? h("span", { class: "muted" }, ` ${c.version}`) : null),
  h("td", {}, answerText(c.task, c.prediction)),
  h("td", {}, c.label ? [labelText(c.task, c.label), " ", verdict(c)] : h("span", { class: "muted" }, "unlabeled")),
  h("td", {}, when(c.created_at ?? c.received_at))));

  const filtered = FILTERS.some((k) => choices[k]);
  const emptyText = offset ? "No captures on this page."
    : filtered ? "No captures match these filters." : "No captures yet: devices upload them when capture sampling is on.";
  return h("div", {}, h("h1", {}, "Captures"), filters,
    pager(offset, captures.length, more, (from) => capturesHref({ ...choices, offset: from })),
    captures.length
      ? table([h("span", { class: "sr-only" }, "Input"), "Capture", "Device", "Model", "Prediction", "Label", "Predicted"],
        rows)
      : h("p", { class: "empty empty-state" }, emptyText));
}

const shortId = (id) => (id.length > 14 ? `${id.slice(0, 13)}…` : id);

/** "Captures 26–50" with Prev and Next (Next off when this page came back short). */
function pager(offset, shown, more, href) {
  if (offset === 0 && !shown) return null;
  const to = (from) => () => { location.hash = href(from); };
  return h("p", { class: "pager" },
    h("span", { class: "pager-range" }, shown ? `Captures ${num(offset + 1)}–${num(offset + shown)}, latest uploads first` : ""),
    h("button", { type: "button", class: "secondary small-button", disabled: offset === 0,
      onclick: to(Math.max(0, offset - PAGE)) }, "← Prev"),
    h("button", { type: "button", class: "secondary small-button", disabled: !more,
      onclick: to(offset + PAGE) }, "Next →"));
}

/** The first image-like input as a small picture, else the first input's shape; filled in when its view
 * arrives (at once when it was read before). */
function thumbCell(c) {
  const entry = cachedView(c.device, c.capture_id);
  const cell = h("td", { class: "thumb" });
  const fill = (v) => cell.replaceChildren(thumbOf(v));
  if (entry.value) fill(entry.value);
  else {
    cell.append(h("span", { class: "thumb-wait", "aria-label": "loading" }));
    entry.promise.then(fill);
  }
  return cell;
}

function thumbOf(v) {
  if (v.failed) return h("span", { class: "small muted", title: v.failed }, "no preview");
  const image = v.inputs.find((t) => t.kind === "image" && t.image);
  const canvas = image && imageCanvas(image.image, THUMB_SIDE, { class: "pixelated thumb-img", role: "img",
    "aria-label": `${image.name} ${shapeText(image)}` });
  if (canvas) return canvas;
  if (!v.inputs.length) return h("span", { class: "small muted" }, "no inputs");
  const t = v.inputs[0];
  return h("span", { class: "thumb-shape", title: `${t.name}: ${t.kind}` },
    h("span", {}, `[${t.shape.join(" × ")}]`), " ", h("span", {}, t.dtype));
}

// --- answers and labels in words -----------------------------------------------------------------------

const joined = (values, fmt) => values.map(fmt).join(", ");

function answerText(task, values) {
  if (!task || !values) return h("span", { class: "muted" }, "–");
  return answerWord(task, values);
}

const answerWord = (task, values) => (task === "classification" ? `class ${joined(values, String)}` : joined(values, value));

const labelText = (task, values) => h("strong", {}, answerWord(task, values));

/** For a classifier, whether the label agrees with the answer (every sample): right or wrong. */
function verdict(c) {
  if (c.task !== "classification" || !c.prediction || !c.label) return null;
  const right = c.label.filter((y, i) => y === c.prediction[i]).length;
  if (right === c.label.length) return chip("right", "ok");
  return chip(c.label.length > 1 ? `${right}/${c.label.length} right` : "wrong", "bad");
}

// --- one capture ---------------------------------------------------------------------------------------

export async function viewCapture(route, ctx) {
  const cut = route.arg.indexOf("/");
  const device = cut > 0 ? route.arg.slice(0, cut) : route.arg;
  const id = cut > 0 ? route.arg.slice(cut + 1) : "";
  const [v, models] = await Promise.all([api(viewPath(device, id)), api("/models")]);
  keep(`${device}/${id}`, { value: v, promise: Promise.resolve(v) });
  const c = v.capture;
  document.title = `Capture ${id} · edgemill fleet`;
  const registered = models.some((m) => m.name === c.model);

  return h("div", {},
    h("p", { class: "crumbs small" }, link(lastList, "← Captures")),
    h("div", { class: "page-head" }, h("h1", {}, "Capture ", h("code", {}, id)),
      h("span", { class: "muted" }, deviceLink(c.device), " · ", registered ? modelLink(c.model) : c.model,
        c.version ? ` ${c.version}` : "", " · predicted ", when(c.created_at), " · received ", when(c.received_at),
        ` · ${bytes(c.size_bytes)} · `, v.sampled ? "sampled" : "requested")),
    h("div", { class: "capture-cols" },
      section("Inputs", tensors(ctx, v.inputs, "No inputs were captured.")),
      h("div", { class: "capture-side" },
        section("Answer", answerBlock(v.answer, c)),
        section("Label", labelBlock(ctx, c, v.answer)))),
    section("Outputs", tensors(ctx, v.outputs, "No outputs were captured.")),
    v.auxiliary.length ? section("Auxiliary data", auxiliary(v.auxiliary)) : null);
}

function tensors(ctx, list, emptyText) {
  if (!list.length) return empty(emptyText);
  return h("div", { class: "tensors" }, list.map((t) => tensorFigure(ctx, t)));
}

function answerBlock(a, c) {
  if (!a) {
    return empty("The outputs hold no answer a label can judge (that takes a classifier's scores [N, C] or class "
      + "[N], or a regressor's value [N]).");
  }
  const several = a.values.length > 1;
  if (a.task === "regression") {
    return h("div", {}, h("p", { class: "answer" }, several ? "Predicted values " : "Predicted value ",
      h("strong", {}, joined(a.values, value))));
  }
  const top = Array.isArray(a.top) ? a.top : [];
  return h("div", {},
    h("p", { class: "answer" }, several ? "Predicted classes " : "Predicted class ",
      h("strong", {}, joined(a.values, String)), " ", verdict(c),
      a.classes ? h("span", { class: "muted" }, ` of ${num(a.classes)} classes`) : null),
    top.length ? h("div", {},
      h("h3", {}, several ? "Top classes, first sample" : "Top classes"),
      h("ol", { class: "bars" }, top.map((t) => h("li", { class: t.class === a.values[0] ? "picked" : null },
        h("span", { class: "bar-name" }, `class ${t.class}`),
        h("span", { class: "bar-track", "aria-hidden": "true" },
          h("span", { class: "bar-fill", style: `width:${Math.max(0, Math.min(1, t.score ?? 0)) * 100}%` })),
        h("span", { class: "bar-value" }, t.score == null ? "–" : pct(t.score)))))) : null);
}

// What was typed into a capture's label form and not saved: kept across the 5 s refresh and a refused save.
const drafts = new Map();  // "device/id" -> [text per sample]

function labelBlock(ctx, c, answer) {
  const key = `${c.device}/${c.capture_id}`;
  const current = c.label
    ? h("dl", { class: "kv" },
      h("dt", {}, "label"), h("dd", {}, labelText(c.task, c.label), " ", verdict(c)),
      h("dt", {}, "set by"), h("dd", {}, c.labeled_by ?? "–", ", ", when(c.labeled_at)),
      c.previous_label ? [h("dt", {}, "previous"), h("dd", {}, labelText(c.task, c.previous_label))] : null)
    : h("div", {}, h("p", { class: "empty" }, "Not labeled yet."),
      c.previous_label ? h("p", { class: "small muted" }, `Was ${answerWord(c.task, c.previous_label)}; cleared by `,
        c.labeled_by ?? "–", " ", when(c.labeled_at), ".") : null);
  if (!c.task || !c.prediction) return h("div", {}, current);

  const cls = c.task === "classification";
  const classes = answer?.classes;
  const n = c.prediction.length;
  const draft = drafts.get(key);
  const inputs = c.prediction.map((said, i) => h("input", {
    type: "number", id: `label-${i}`, name: `label-${i}`, class: "label-input", step: cls ? 1 : "any",
    min: cls ? 0 : null, max: cls && classes ? classes - 1 : null, inputmode: cls ? "numeric" : "decimal",
    placeholder: `model said ${cls ? said : value(said)}`,
    value: draft ? draft[i] : c.label && c.label[i] != null ? String(c.label[i]) : "",
    oninput: () => drafts.set(key, inputs.map((x) => x.value)),
  }));
  const what = cls ? `Class index${classes ? ` (0–${classes - 1})` : ""}` : "True value";
  const fields = inputs.map((input, i) => h("div", { class: "field" },
    h("label", { for: input.id }, n > 1 ? `${what}, sample ${i + 1}` : what), input));
  const path = labelPath(c.device, c.capture_id);
  const refocus = () => { document.getElementById("label-0")?.focus(); };

  const save = async (e) => {
    e.preventDefault();
    const button = e.currentTarget.querySelector("button[type=submit]");
    const texts = inputs.map((x) => x.value.trim());
    drafts.set(key, inputs.map((x) => x.value));
    if (texts.some((t) => t === "" || !Number.isFinite(Number(t)))) {
      ctx.failed(new ApiError(400, { message: `Type a ${cls ? "class index" : "number"} for ${n > 1 ? "every sample" : "the label"}.`,
        fix: cls ? "the index of the right class, e.g. 3" : "the true value, e.g. 12.5" }));
      refocus();
      return;
    }
    const values = texts.map(Number);
    const ok = await ctx.act(button, async () => {
      await api(path, { method: "PUT", body: { label: n > 1 ? values : values[0] } });
      drafts.delete(key);
    });
    if (!ok) refocus();  // the banner says what is wrong; the value stays to be corrected
  };
  const clear = (e) => ctx.act(e.currentTarget, async () => {
    await api(path, { method: "DELETE" });
    drafts.delete(key);
  });
  if (!ctx.can("deployer")) return h("div", {}, current);  // labeling needs the deployer role
  return h("div", {}, current,
    h("form", { class: "label-form", novalidate: true, onsubmit: save },
      fields,
      h("div", { class: "actions" },
        h("button", { type: "submit" }, c.label ? "Save new label" : "Save label"),
        c.label ? h("button", { type: "button", class: "secondary", onclick: clear }, "Clear") : null)));
}

function auxiliary(list) {
  return h("div", { class: "aux" }, list.map((a) => h("div", { class: "aux-item" },
    h("p", {}, h("code", {}, a.name), " ", h("span", { class: "muted small" }, bytes(a.size))),
    a.text != null ? h("pre", { class: "aux-text" }, a.text)
      : h("p", { class: "small muted" }, "binary: not shown"))));
}
