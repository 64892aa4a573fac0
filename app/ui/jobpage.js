// One job: every field, its history as a timeline, and its actions.

import { canCommand, commandJob } from "./actions.js";
import { get } from "./api.js";
import { canDelete, deleteJob } from "./cleanup.js";
import { age, clear, el, labelChips, progressBar, stateChip, time } from "./dom.js";
import { Watcher } from "./live.js";
import { notify } from "./notice.js";
import { rerunButton } from "./rerun.js";
import { refreshRunTimes, runTime } from "./runtime.js";
import { status } from "./status.js";

let current = null;
const watcher = new Watcher((job) => { show(job); loadHistory(job.id); }, markDeleted);

function field(name, ...value) {
  return [el("dt", {}, name), el("dd", { dataset: { field: name } }, ...value)];
}

function text(value) {
  return value ? value : el("span", { class: "muted" }, "–");
}

function jobLinks(ids) {
  return ids.length ? ids.flatMap((id, i) => [i ? ", " : "",
    el("a", { href: `#/jobs/${id}`, class: "mono" }, id)]) : text("");
}

// Run again and Delete, for a job that has ended (API 20; admin for delete).
function moreActions(job) {
  const again = rerunButton(job, (fresh) => { location.hash = `#/jobs/${fresh.id}`; });
  const remove = canDelete(job) ? el("button", { type: "button", class: "danger",
    onclick: async () => {
      try {
        if (await deleteJob(job)) {
          notify(`Job ${job.name || job.id} deleted.`);
          location.hash = "#/";
        }
      } catch (error) {
        notify(error.message, true);
      }
    } }, "Delete") : null;
  clear(document.getElementById("job-more")).append(...[again, remove].filter(Boolean));
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
    // The fields of API 20 where the service gives them, not "–" for unknown.
    ...("started_at" in job ? field("started", time(job.started_at)) : []),
    ...field("updated", time(job.updated_at)),
    ...field("ended", time(job.ended_at || job.finished_at)),
    ...("started_at" in job ? field("run time", runTime(job)) : []),
    ...("retry_of" in job ? [
      ...field("run again from", job.retry_of ? jobLinks([job.retry_of]) : text("")),
      ...field("run again as", jobLinks(job.reruns || []))] : []));
  moreActions(job);
  const actions = document.getElementById("job-actions");
  actions.hidden = !canCommand();
  for (const button of actions.querySelectorAll("button[data-command]")) {
    const command = button.dataset.command;
    button.disabled = !(job.state === "start" ? command !== "start"
      : job.state === "pause" ? command !== "pause" : false);
  }
}

function markDeleted() {
  document.getElementById("job-title").append(" ", el("span", { class: "state" }, "deleted"));
  document.getElementById("job-actions").hidden = true;
  clear(document.getElementById("job-more"));
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
  clear(document.getElementById("job-more"));
  const job = await get(`/v1/jobs/${id}`);
  show(job);
  await loadHistory(id);
  watcher.watch({ [job.id]: job.version });
}

// The worker's acknowledgement comes with a heartbeat, which the watch does
// not report (no new version): re-read the job while it is awaited.
export async function checkAcknowledgement() {
  if (!current) return;
  refreshRunTimes(document.getElementById("job-fields"));
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
  for (const button of document.querySelectorAll("#job-actions button[data-command]")) {
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
