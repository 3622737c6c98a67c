/* The control plane's REST API with the operator's key; failures are ApiError with the server's ErrorOut. */

const API = "/api/v1";
const KEY_STORE = "edgemill.apiKey";

/** The operator key, kept for this tab only (sessionStorage). */
export const session = {
  key: sessionStorage.getItem(KEY_STORE),
  set(key) {
    this.key = key;
    if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
  },
};

export class ApiError extends Error {
  constructor(status, body) {
    super(body.message);
    this.status = status;
    this.body = body;
  }
}

export async function api(path, options) {
  const res = await request(path, options);
  return res.status === 204 ? null : res.json();
}

/** A paged list: this page's items and how many match in all (the X-Total-Count header). */
export async function apiPage(path) {
  const res = await request(path);
  const items = await res.json();
  const total = Number.parseInt(res.headers.get("X-Total-Count") ?? "", 10);
  return { items, total: Number.isNaN(total) ? items.length : total };
}

async function request(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${session.key}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { message: `Cannot reach the control plane (${e.message}).` });
  }
  if (res.ok) return res;
  let err = null;
  try { err = await res.json(); } catch { /* not JSON: fall back to the status line */ }
  if (!err || typeof err.message !== "string") {
    const detail = err && typeof err.detail === "string" ? err.detail : `${res.status} ${res.statusText}`;
    err = { message: detail };
  }
  throw new ApiError(res.status, err);
}
