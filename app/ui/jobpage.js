// One job: every field, its history as a timeline, and its actions.

import { canCommand, commandJob } from "./actions.js";
import { get } from "./api.js";
import { age, clear, el, labelChips, progressBar, stateChip, time } from "./dom.js";
import { Watcher } from "./live.js";
import { status } from "./status.js";

let current = null;
const watcher = new Watcher((job) => { show(job); loadHistory(job.id); }, markDeleted);

function field(name, ...value) {
  return [el("dt", {}, name), el("dd", { dataset: { field: name } }, ...value)];
}

function text(value) {
  return value ? value : el("span", { class: "muted" }, "–");
}

function show(job) {
  current = job;
  document.getElementById("job-title").replaceChildren(
    job.name || "Unnamed job", " ", stateChip(job));
  document.title = `${job.name || job.id} · Karmchari`;
  clear(document.getElementById("job-fields")).append(
    ...field("id", el("span", { class: "mono" }, job.id)),
    ...field("name", text(job.name)),
    ...field("type", job.type),
    ...field("requested state", job.state),
    ...field("observed state", text(job.observed_state)),
    ...field("version", String(job.version)),
    ...field("progress", progressBar(job.progress)),
    ...field("message", text(job.message)),
    ...field("worker", text(job.worker)),
    ...field("heartbeat", job.heartbeat_at
      ? [time(job.heartbeat_at), ` (${age(job.heartbeat_at)})`] : "never"),
    ...field("heartbeat timeout", job.heartbeat_timeout ? `${job.heartbeat_timeout} s` : "none"),
    ...field("stalled", job.stalled ? "yes" : "no"),
    ...field("labels", Object.keys(job.labels || {}).length ? labelChips(job.labels)
      : text("")),
    ...field("created", time(job.created_at)),
    ...field("updated", time(job.updated_at)),
    ...field("ended", time(job.ended_at)));
  const actions = document.getElementById("job-actions");
  actions.hidden = !canCommand();
  for (const button of actions.querySelectorAll("button")) {
    const command = button.dataset.command;
    button.disabled = !(job.state === "start" ? command !== "start"
      : job.state === "pause" ? command !== "pause" : false);
  }
}

function markDeleted() {
  document.getElementById("job-title").append(" ", el("span", { class: "state" }, "deleted"));
  document.getElementById("job-actions").hidden = true;
}

async function loadHistory(id) {
  const history = await get(`/v1/jobs/${id}/history`);
  if (!current || current.id !== id) return;
  clear(document.getElementById("timeline")).append(...history.entries.map((entry) =>
    el("li", { class: `event to-${entry.to}` },
      el("div", { class: "event-head" },
        el("strong", {}, entry.command),
        entry.from ? ` ${entry.from} → ${entry.to}` : ` → ${entry.to}`,
        el("span", { class: "muted" }, ` · v${entry.version} · `),
        time(entry.at)),
      el("div", { class: "event-body" },
        el("span", {}, "by ", entry.actor ? el("strong", { class: "actor" }, entry.actor)
          : el("span", { class: "muted" }, "anonymous")),
        entry.reason ? el("q", { class: "reason" }, entry.reason) : null))));
}

export async function showJob(id) {
  current = null;
  clear(document.getElementById("timeline"));
  clear(document.getElementById("job-fields"));
  const job = await get(`/v1/jobs/${id}`);
  show(job);
  await loadHistory(id);
  watcher.watch({ [job.id]: job.version });
}

// The worker's acknowledgement comes with a heartbeat, which the watch does
// not report (no new version): re-read the job while it is awaited.
export async function checkAcknowledgement() {
  if (!current) return;
  const shown = document.querySelector("#job-title .state");
  if (shown && shown.dataset.status && shown.dataset.status !== status(current).kind) {
    show(current);  // a pending transition lapsed with time alone (app/ui/status.js)
  }
  if (!status(current).awaiting) return;
  const id = current.id;
  const job = await get(`/v1/jobs/${id}`).catch(() => null);
  if (job && current && current.id === id) show(job);
}

export function stopJob() {
  watcher.stop();
  current = null;
}

export function setUp() {
  for (const button of document.querySelectorAll("#job-actions button")) {
    button.addEventListener("click", async () => {
      if (!current) return;
      const result = await commandJob(current, button.dataset.command);
      if (result) {
        show(result.job);
        await loadHistory(result.job.id);
      }
    });
  }
}
