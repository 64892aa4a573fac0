// "Run again": a job that has ended is registered anew with the same type,
// name, labels and heartbeat timeout (POST /v1/jobs/{id}/rerun, API 20). Who
// may register jobs may run one again.

import { can } from "./actions.js";
import { post } from "./api.js";
import { el } from "./dom.js";
import { notify } from "./notice.js";
import { FINAL_STATES } from "./status.js";

// A service that can run a job again says so in every job it shows: the job
// names what it reruns (retry_of, null for most). Before that, no button
// that could only fail.
export function canRerun(job) {
  return "retry_of" in job && can("register") && FINAL_STATES.has(job.state);
}

// onRegistered(newJob) once the service has registered it. The button is
// disabled while the request runs: one click, one new job.
export function rerunButton(job, onRegistered, { small = false } = {}) {
  if (!canRerun(job)) return null;
  const button = el("button", { type: "button", class: `rerun${small ? " small" : ""}`,
    "aria-label": `Run job ${job.name || job.id} again` }, "Run again");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const fresh = await post(`/v1/jobs/${job.id}/rerun`);
      notify(`Registered again as job ${fresh.id}.`);
      onRegistered(fresh);
    } catch (error) {
      notify(`Could not run it again: ${error.message}`, true);
      button.disabled = false;
    }
  });
  return button;
}
