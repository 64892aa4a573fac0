// Pause, resume and kill: every action goes through one dialog that asks for a
// reason (kept in the job's history) and, for a kill, for confirmation.

import { post } from "./api.js";
import { confirmDialog } from "./confirm.js";
import { plural } from "./dom.js";

const VERBS = { pause: "Pause", start: "Resume", kill: "Kill" };

let role = { permissions: [] };
export function setRole(whoami) {
  role = whoami;
  document.body.classList.toggle("can-command", canCommand());
  document.body.classList.toggle("can-delete", can("delete"));
}
export function can(permission) {
  return role.permissions.includes(permission);
}
export function canCommand() {
  return can("command");
}

// Shows the dialog; resolves to run()'s answer, or null when cancelled.
function ask(command, target, run) {
  const reason = document.getElementById("command-reason");
  document.getElementById("command-target").textContent = target.detail;
  document.getElementById("command-warning").textContent = command === "kill"
    ? "A kill cannot be undone: the worker stops and the job ends." : "";
  document.getElementById("command-confirm").className = command === "kill" ? "danger" : "";
  reason.value = "";
  return confirmDialog("command", { title: `${VERBS[command]} ${target.title}`,
    button: command === "kill" ? "Yes, kill" : VERBS[command], focus: reason },
  () => run(reason.value.trim()));
}

function body(command, reason) {
  return reason ? { command, reason } : { command };
}

export function commandJob(job, command) {
  return ask(command, { title: `job ${job.name || job.id}`, detail: `Job ${job.id}` },
    (reason) => post(`/v1/jobs/${job.id}/commands`, body(command, reason)));
}

const COUNTS = ["matched", "changed", "unchanged", "refused", "not_found"];

// A filter may match more jobs than one request walks: the service then
// answers a next_cursor, and the same request goes on from there.
async function commandWhere(command, reason, where) {
  const total = Object.fromEntries(COUNTS.map((name) => [name, 0]));
  let cursor = null;
  do {
    const answer = await post("/v1/jobs/commands",
      { ...body(command, reason), where, ...(cursor ? { cursor } : {}) });
    for (const name of COUNTS) total[name] += answer[name] || 0;
    cursor = answer.next_cursor;
    document.getElementById("command-error").textContent = cursor
      ? `${plural(total.matched, "job")} so far…` : "";
  } while (cursor);
  return total;
}

// ids: a list of job ids, or null to act on every job matching `where`.
export function commandMany(command, { ids, where, description }) {
  return ask(command, { title: ids ? plural(ids.length, "job") : "every matching job",
    detail: description },
  (reason) => (ids ? post("/v1/jobs/commands", { ...body(command, reason), ids })
    : commandWhere(command, reason, where)));
}

export function summary(result) {
  return `${result.matched} matched: ${result.changed} changed, ${result.unchanged} unchanged, `
    + `${result.refused} refused, ${result.not_found} not found`;
}
