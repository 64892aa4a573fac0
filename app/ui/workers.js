// The Workers page (#/workers): every worker name seen in heartbeats, from
// GET /v1/workers (API 20), with its jobs by state, its last heartbeat and how
// many of its jobs are stalled; each links to its jobs (#/?worker=NAME).

import { get } from "./api.js";
import { age, clear, el, plural, time } from "./dom.js";

const PAGE_SIZE = 100;
const view = { cursors: [null], next: null, request: 0 };

export function workerLink(name) {
  return `#/?${new URLSearchParams({ worker: name })}`;
}

// {"running": 2, "paused": 1, "done": 0} -> "2 running, 1 paused"
function jobCounts(jobs) {
  const parts = Object.entries(jobs || {}).filter(([, n]) => n > 0)
    .map(([word, n]) => `${n.toLocaleString("en")} ${word}`);
  return parts.length ? parts.join(", ") : el("span", { class: "muted" }, "none");
}

// exact: false when the service counted at most 1,000 stalled jobs per shard
// and found that many: each count is then a lower bound.
function workerRow(worker, exact) {
  return el("tr", { dataset: { worker: worker.name } },
    el("td", { class: "name" }, el("a", { href: workerLink(worker.name),
      title: `Jobs whose last heartbeat came from ${worker.name}` }, worker.name)),
    el("td", { class: "jobs-by-state" }, jobCounts(worker.jobs)),
    el("td", { class: `stalled${worker.stalled ? " warn" : ""}`,
      title: exact ? "" : "at least: more jobs are stalled than the service counts per request" },
      `${exact ? "" : "≥ "}${(worker.stalled || 0).toLocaleString("en")}`),
    el("td", { class: "last" }, time(worker.last_heartbeat_at),
      el("span", { class: "muted" }, ` (${age(worker.last_heartbeat_at)})`)));
}

async function load() {
  const request = ++view.request;
  const cursor = view.cursors[view.cursors.length - 1];
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (cursor) query.set("cursor", cursor);
  const status = document.getElementById("workers-status");
  status.hidden = false;
  status.textContent = "Loading workers…";
  let page;
  try {
    page = await get(`/v1/workers?${query}`);
  } catch (error) {
    if (request === view.request) {
      status.textContent = error.status === 404
        ? "This service does not list workers (GET /v1/workers is missing)."
        : `Workers unavailable: ${error.message}`;
    }
    return;
  }
  if (request !== view.request) return;
  view.next = page.next_cursor;
  clear(document.getElementById("worker-rows")).append(...page.workers.map(
    (worker) => workerRow(worker, page.stalled_exact !== false)));
  status.textContent = page.workers.length ? "" : "No worker has sent a heartbeat yet.";
  status.hidden = page.workers.length > 0;
  const one = view.cursors.length === 1 && !page.next_cursor;
  document.getElementById("workers-count").textContent = one
    ? plural(page.workers.length, "worker") : `${plural(page.workers.length, "worker")} on this page`;
  document.getElementById("workers-older").disabled = !page.next_cursor;
  document.getElementById("workers-first").disabled = view.cursors.length === 1;
}

export function showWorkers() {
  view.cursors = [null];
  return load();
}

export function setUp() {
  document.getElementById("workers-older").addEventListener("click", () => {
    if (!view.next) return;
    view.cursors.push(view.next);
    load();
  });
  document.getElementById("workers-first").addEventListener("click", () => {
    view.cursors = [null];
    load();
  });
}
