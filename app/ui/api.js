// Calls to the JSON API. The token lives in sessionStorage only: never in a
// URL, never in a cookie, gone when the tab closes.

const TOKEN_KEY = "karmchari.token";

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// Estimated server clock minus ours, from the Date header, for heartbeat ages.
let clockOffsetMs = 0;
export function serverNow() {
  return Date.now() + clockOffsetMs;
}
export function setServerNow(iso) {
  const t = Date.parse(iso);
  if (!Number.isNaN(t)) clockOffsetMs = t - Date.now();
}

let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

export async function call(method, path, body, { signal } = {}) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, credentials: "omit", cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const date = response.headers.get("Date");
  if (date && clockOffsetMs === 0) setServerNow(new Date(date).toISOString());
  let data = null;
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) data = await response.json();
  if (!response.ok) {
    if (response.status === 401) onUnauthorized();
    throw new ApiError(response.status, data);
  }
  return data;
}

export const get = (path, options) => call("GET", path, undefined, options);
export const post = (path, body, options) => call("POST", path, body, options);

// The filter as GET /v1/jobs takes it (the page's URL fragment uses the same).
export function filterQuery(filter) {
  const query = new URLSearchParams();
  if (filter.state) query.set("state", filter.state);
  if (filter.type) query.set("type", filter.type);
  for (const label of filter.labels || []) query.append("label", label);
  if (filter.stalled) query.set("stalled", filter.stalled);  // "true" or "false"
  if (filter.started) query.set("started", filter.started);  // "true" or "false"
  if (filter.worker) query.set("worker", filter.worker);
  if (filter.name_prefix) query.set("name_prefix", filter.name_prefix);
  return query;
}

export function jobsQuery(filter, cursor, limit = 50) {
  const query = filterQuery(filter);
  query.set("limit", String(limit));
  if (cursor) query.set("cursor", cursor);
  return `/v1/jobs?${query}`;
}

// The filter as POST /v1/jobs/commands takes it in "where".
export function whereOf(filter) {
  const where = {};
  if (filter.state) where.state = filter.state;
  if (filter.type) where.type = filter.type;
  if (filter.labels && filter.labels.length) where.label = filter.labels;
  if (filter.stalled) where.stalled = filter.stalled === "true";
  // A service that cannot filter on these refuses the whole "where" (400):
  // never a command on more jobs than the filter shows.
  if (filter.worker) where.worker = filter.worker;
  if (filter.name_prefix) where.name_prefix = filter.name_prefix;
  if (filter.started) where.started = filter.started === "true";
  return where;
}
