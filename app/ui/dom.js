// Building DOM. Values from users (names, labels, reasons, worker names) only
// ever go in as text nodes; nothing here parses strings as markup.

import { serverNow } from "./api.js";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

const DONE_WORDS = { start: "running", pause: "paused", kill: "killed", done: "done",
  failed: "failed" };
const PENDING_WORDS = { start: "resuming…", pause: "pausing…", kill: "killing…" };

// What the worker is doing, beside what was requested: a command is pending
// ("pausing…") until the worker reports the state it asks for (observed_state).
// awaiting: a worker runs the job and has not acknowledged yet.
export function status(job) {
  const hasWorker = Boolean(job.observed_state || job.heartbeat_at);
  if (job.state in PENDING_WORDS && hasWorker && job.observed_state !== job.state) {
    return { text: PENDING_WORDS[job.state], pending: true, awaiting: true };
  }
  if (job.state === "start" && !hasWorker) {
    return { text: "waiting for a worker", pending: true, awaiting: false };
  }
  return { text: DONE_WORDS[job.state] || job.state, pending: false, awaiting: false };
}

export function age(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, Math.round((serverNow() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

export function time(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

export function progressBar(progress) {
  if (progress === null || progress === undefined) return el("span", { class: "muted" }, "–");
  const shown = `${Math.round(progress)}%`;  // a percentage, 0 to 100
  return el("span", { class: "progress" },
    el("progress", { max: "100", value: String(progress), "aria-label": `progress ${shown}` }),
    el("span", { class: "progress-text" }, shown));
}

export function labelChips(labels) {
  return el("span", { class: "labels" },
    Object.entries(labels || {}).map(([k, v]) => el("span", { class: "chip" }, `${k}:${v}`)));
}

export function stateChip(job) {
  const s = status(job);
  return el("span", { class: `state state-${job.state}${s.pending ? " pending" : ""}` },
    s.text);
}
