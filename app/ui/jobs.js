// The jobs table: filters, cursor paging (newest first), selection, actions,
// and rows that update themselves through the watcher.

import { canCommand, commandJob, commandMany, summary } from "./actions.js";
import { filterQuery, get, jobsQuery, whereOf } from "./api.js";
import { deleteMatching, deleteSelected, deleteSummary, filterIsFinal } from "./cleanup.js";
import { age, clear, el, labelChips, plural, progressBar, stateChip } from "./dom.js";
import { Watcher } from "./live.js";
import { notify } from "./notice.js";
import { rerunButton } from "./rerun.js";
import { refreshRunTimes, runTime } from "./runtime.js";
import { status } from "./status.js";

const PAGE_SIZE = 50;
const ACK_CHECKS = 10;  // jobs re-read per second while their worker has not acknowledged
const ROW_ACTIONS = { start: ["pause", "kill"], pause: ["start", "kill"] };
const ACTION_WORDS = { pause: "Pause", start: "Resume", kill: "Kill" };

const view = {
  filter: {},
  cursors: [null],   // cursor of each page seen so far; the last is the one shown
  nextCursor: null,
  rows: new Map(),   // id -> {job, tr}
  selected: new Set(),
  request: 0,
};
const watcher = new Watcher(updateRow, markMissing);

export function filterFromQuery(query) {
  return {
    state: query.get("state") || "",
    type: query.get("type") || "",
    labels: query.getAll("label").filter(Boolean),
    stalled: ["true", "false"].includes(query.get("stalled")) ? query.get("stalled") : "",
    started: ["true", "false"].includes(query.get("started")) ? query.get("started") : "",
    worker: query.get("worker") || "",
    name_prefix: query.get("name_prefix") || "",
  };
}

function describe(filter) {
  const parts = [];
  if (filter.state) parts.push(`state ${filter.state}`);
  if (filter.type) parts.push(`type ${filter.type}`);
  for (const label of filter.labels) parts.push(`label ${label}`);
  if (filter.stalled) parts.push(filter.stalled === "true" ? "stalled" : "not stalled");
  if (filter.started) parts.push(filter.started === "true" ? "a heartbeat" : "no heartbeat yet");
  if (filter.worker) parts.push(`worker ${filter.worker}`);
  if (filter.name_prefix) parts.push(`a name starting with "${filter.name_prefix}"`);
  return parts.length ? `Every job with ${parts.join(", ")}` : "Every job";
}

function actionButtons(job) {
  const again = rerunButton(job, () => { if (onFirstPage()) loadPage(); }, { small: true });
  if (!canCommand()) return again ? [again] : [];
  return [again, ...(ROW_ACTIONS[job.state] || []).map((command) => el("button", {
    type: "button", class: `small${command === "kill" ? " danger" : ""}`, dataset: { command },
    "aria-label": `${ACTION_WORDS[command]} job ${job.name || job.id}`,
    onclick: () => act(job.id, command),
  }, ACTION_WORDS[command]))].filter(Boolean);
}

async function act(id, command) {
  const row = view.rows.get(id);
  if (!row) return;
  const result = await commandJob(row.job, command);
  if (result) updateRow(result.job);
}

function rowCells(job) {
  const label = job.name || job.id;
  const select = el("input", { type: "checkbox", class: "select-row",
    "aria-label": `Select job ${label}`, checked: view.selected.has(job.id),
    onchange: (e) => { toggle(job.id, e.target.checked); } });
  return [
    el("td", { class: "sel" }, canCommand() ? select : null),
    el("td", { class: "id" }, el("a", { href: `#/jobs/${job.id}`, class: "mono",
      title: job.id }, job.id)),
    el("td", { class: "name" }, job.name || el("span", { class: "muted" }, "–")),
    el("td", { class: "wide-only" }, job.type),
    el("td", { class: "requested wide-only" }, job.state),
    el("td", { class: "status" }, stateChip(job)),
    el("td", {}, progressBar(job.progress)),
    el("td", { class: "worker wide-only" }, job.worker || el("span", { class: "muted" }, "–")),
    el("td", { class: "age wide-only", dataset: { at: job.heartbeat_at || "" },
      title: job.heartbeat_at || null },
    age(job.heartbeat_at)),
    el("td", { class: "run-time wide-only" }, runTime(job)),
    el("td", { class: "wide-only" }, labelChips(job.labels)),
    el("td", { class: "row-actions" }, actionButtons(job)),
  ];
}

function renderRow(job) {
  const tr = el("tr", { dataset: { id: job.id, state: job.state } }, rowCells(job));
  view.rows.set(job.id, { job, tr });
  return tr;
}

// A changed job from the watcher or from an action: redraw its row in place.
export function updateRow(job) {
  const row = view.rows.get(job.id);
  if (!row || job.version < row.job.version) return;
  row.job = job;
  row.tr.dataset.state = job.state;
  row.tr.classList.remove("missing");
  // Keyboard users keep their place: focus goes back to the same control, or
  // to the row's link when that control is gone (a finished job has no buttons).
  const focused = row.tr.contains(document.activeElement) ? document.activeElement : null;
  row.tr.replaceChildren(...rowCells(job));
  if (focused) {
    const selector = focused.dataset.command ? `[data-command="${focused.dataset.command}"]`
      : focused.classList.contains("select-row") ? ".select-row" : "a";
    (row.tr.querySelector(selector) || row.tr.querySelector("a")).focus();
  }
}

function markMissing(id) {
  const row = view.rows.get(id);
  if (!row) return;
  row.tr.classList.add("missing");
  row.tr.querySelector(".status").replaceChildren(el("span", { class: "state" }, "deleted"));
  row.tr.querySelector(".row-actions").replaceChildren();
}

function toggle(id, on) {
  if (on) view.selected.add(id);
  else view.selected.delete(id);
  showSelection();
}

function showSelection() {
  document.getElementById("selection-count").textContent = `${view.selected.size} selected`;
  for (const b of document.querySelectorAll("[data-scope=selected]")) {
    b.disabled = view.selected.size === 0;
  }
  document.getElementById("delete-selected").disabled = view.selected.size === 0;
  // A bulk command's "where" takes state, type, label, stalled and started: a
  // filter on a worker or a name prefix is not offered one (it would be refused).
  const whole = !view.filter.worker && !view.filter.name_prefix;
  for (const b of document.querySelectorAll("[data-scope=filter]")) {
    b.disabled = !whole;
    b.title = whole ? "" : "Not with a worker or name filter: select the rows instead";
  }
  document.getElementById("delete-matching").disabled = !whole || !filterIsFinal(view.filter);
}

// The first page of a filter, asked for at start-up beside GET /v1/whoami
// rather than after it; null if it fails (the normal path then tries again).
export function prefetch(filter) {
  return get(jobsQuery(filter, null, PAGE_SIZE)).catch(() => null);
}

export async function loadPage(prefetched = null) {
  const request = ++view.request;
  const cursor = view.cursors[view.cursors.length - 1];
  const page = (prefetched && await prefetched)
    || await get(jobsQuery(view.filter, cursor, PAGE_SIZE));
  if (request !== view.request) return;  // a newer request replaced this one
  view.nextCursor = page.next_cursor;
  view.rows.clear();
  clear(document.getElementById("job-rows")).append(...page.jobs.map(renderRow));
  document.getElementById("loading-rows").hidden = true;
  document.getElementById("empty").hidden = page.jobs.length > 0;
  document.getElementById("next-page").disabled = !page.next_cursor;
  document.getElementById("first-page").disabled = view.cursors.length === 1;
  document.getElementById("new-jobs").hidden = true;
  const selectAll = document.getElementById("select-all");
  selectAll.checked = false;
  for (const id of [...view.selected]) if (!view.rows.has(id)) view.selected.delete(id);
  showSelection();
  watcher.watch(Object.fromEntries(page.jobs.map((j) => [j.id, j.version])));
}

export function onFirstPage() {
  return view.cursors.length === 1;
}

// Heartbeats (progress, worker, acknowledgements) do not change a job's
// version, so the watch does not report them. Two bounded reads cover them:
// the jobs awaiting their worker's acknowledgement, once a second...
export async function checkAcknowledgements() {
  // A pending transition lapses with time alone (app/ui/status.js): redraw it.
  for (const { job, tr } of view.rows.values()) {
    const shown = tr.querySelector("td.status .state");
    if (!tr.classList.contains("missing") && shown && shown.dataset.status !== status(job).kind) {
      updateRow(job);
    }
  }
  const awaiting = [...view.rows.values()].filter((r) => status(r.job).awaiting)
    .slice(0, ACK_CHECKS);
  await Promise.all(awaiting.map(({ job }) => get(`/v1/jobs/${job.id}`)
    .then(updateRow, () => {})));
}

// ...and the page shown, at the slow pace of the counts. New jobs are not
// inserted under the reader's eyes: a notice offers them.
export async function refreshRows() {
  const cursor = view.cursors[view.cursors.length - 1];
  const request = view.request;
  const page = await get(jobsQuery(view.filter, cursor, PAGE_SIZE));
  if (request !== view.request) return;
  let unseen = 0;
  for (const job of page.jobs) {
    if (view.rows.has(job.id)) updateRow(job);
    else unseen += 1;
  }
  if (unseen && onFirstPage()) document.getElementById("new-jobs").hidden = false;
}

export function showFilter(filter, prefetched = null) {
  view.filter = filter;
  view.cursors = [null];
  const form = document.getElementById("filters");
  form.elements.state.value = filter.state;
  const typeSelect = form.elements.type;
  if (filter.type && ![...typeSelect.options].some((o) => o.value === filter.type)) {
    typeSelect.append(el("option", {}, filter.type));
  }
  typeSelect.value = filter.type;
  form.elements.label.value = filter.labels.join(" ");  // one label in the form
  form.elements.stalled.value = filter.stalled;
  form.elements.started.value = filter.started;
  form.elements.worker.value = filter.worker;
  form.elements.name_prefix.value = filter.name_prefix;
  return loadPage(prefetched);
}

export function setTypes(types) {
  const select = document.getElementById("filter-type");
  const known = new Set([...select.options].map((o) => o.value));
  for (const type of types) if (!known.has(type)) select.append(el("option", {}, type));
}

export function stopLive() {
  watcher.stop();
}

// Redraws heartbeat ages from the clock alone: no request.
export function tickAges() {
  for (const cell of document.querySelectorAll("#job-rows td.age")) {
    cell.textContent = age(cell.dataset.at);
  }
  refreshRunTimes(document.getElementById("job-rows"));
}

async function bulk(command, scope) {
  const ids = scope === "selected" ? [...view.selected] : null;
  const result = await commandMany(command, ids
    ? { ids, description: `${plural(ids.length, "selected job")}` }
    : { where: whereOf(view.filter), description: describe(view.filter) });
  if (!result) return;
  notify(summary(result));
  view.selected.clear();
  await loadPage();
}

async function removeJobs(asked) {
  try {
    const result = await asked;
    if (!result) return;
    notify(deleteSummary(result));
    view.selected.clear();
    await loadPage();
  } catch (error) {
    notify(error.message, true);
  }
}

export function setUp(navigate) {
  document.getElementById("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target.elements;
    const filter = {
      state: form.state.value, type: form.type.value,
      labels: form.label.value.trim() ? [form.label.value.trim()] : [],
      stalled: form.stalled.value, started: form.started.value,
      worker: form.worker.value.trim(), name_prefix: form.name_prefix.value.trim(),
    };
    navigate(`#/?${filterQuery(filter)}`);
  });
  document.getElementById("clear-filters").addEventListener("click", () => navigate("#/"));
  document.getElementById("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = event.target.elements.id.value.trim().toLowerCase();
    if (/^[0-9a-f]{32}$/.test(id)) navigate(`#/jobs/${id}`);
    else notify("A job id is 32 hexadecimal characters.", true);
  });
  document.getElementById("next-page").addEventListener("click", () => {
    if (!view.nextCursor) return;
    view.cursors.push(view.nextCursor);
    loadPage().catch((e) => notify(e.message, true));
  });
  document.getElementById("first-page").addEventListener("click", () => {
    view.cursors = [null];
    loadPage().catch((e) => notify(e.message, true));
  });
  document.getElementById("show-new").addEventListener("click", () => {
    view.cursors = [null];
    loadPage().catch((e) => notify(e.message, true));
  });
  document.getElementById("select-all").addEventListener("change", (event) => {
    for (const box of document.querySelectorAll("#job-rows .select-row")) {
      box.checked = event.target.checked;
      toggle(box.closest("tr").dataset.id, event.target.checked);
    }
  });
  document.getElementById("delete-selected").addEventListener("click", () => {
    const jobs = [...view.selected].map((id) => view.rows.get(id)?.job).filter(Boolean);
    removeJobs(deleteSelected(jobs));
  });
  document.getElementById("delete-matching").addEventListener("click", () => {
    if (!filterIsFinal(view.filter)) return;
    removeJobs(deleteMatching(view.filter, whereOf(view.filter), describe(view.filter)));
  });
  for (const button of document.querySelectorAll("[data-bulk]")) {
    button.addEventListener("click", () => {
      bulk(button.dataset.bulk, button.dataset.scope).catch((e) => notify(e.message, true));
    });
  }
}
