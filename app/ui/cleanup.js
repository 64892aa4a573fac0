// Deleting ended jobs (admin): one from its page, many from the list, each
// after a confirmation that names how many jobs go. Jobs that have not ended
// are never offered; the service refuses them anyway (refused_ids).

import { can } from "./actions.js";
import { call, get, jobsQuery, post } from "./api.js";
import { confirmDialog } from "./confirm.js";
import { plural } from "./dom.js";
import { FINAL_STATES } from "./status.js";

const COUNT_PAGE = 200;
const COUNT_AT_MOST = 5000;  // past this the confirmation says "at least"

export function canDelete(job = null) {
  return can("delete") && (job === null || FINAL_STATES.has(job.state));
}

// A filter only matches ended jobs when it names a final state.
export function filterIsFinal(filter) {
  return FINAL_STATES.has(filter.state);
}

// Resolves to run()'s answer, or null when cancelled.
function confirmDelete(title, text, run) {
  document.getElementById("confirm-text").textContent = text;
  // The Cancel button has the focus: the safe choice first.
  return confirmDialog("confirm", { title, button: "Yes, delete" }, run);
}

export function deleteJob(job) {
  return confirmDelete("Delete 1 job",
    `Job ${job.name || job.id} (${job.id}) and its history. This cannot be undone.`,
    () => call("DELETE", `/v1/jobs/${job.id}`).then(() => ({ deleted: 1 })));
}

// jobs: the selected rows' jobs; only the ended ones are asked for.
export function deleteSelected(jobs) {
  const ids = jobs.filter((j) => FINAL_STATES.has(j.state)).map((j) => j.id);
  const skipped = jobs.length - ids.length;
  const note = skipped ? ` ${plural(skipped, "selected job has", "selected jobs have")} `
    + "not ended and stay." : "";
  return confirmDelete(`Delete ${plural(ids.length, "job")}`,
    `${plural(ids.length, "ended job")} and their history.${note} This cannot be undone.`,
    () => post("/v1/jobs/commands", { command: "delete", ids }));
}

// The number of jobs a filter matches, walking the listing (bounded).
async function countMatching(filter) {
  let count = 0;
  let cursor = null;
  do {
    const page = await get(jobsQuery(filter, cursor, COUNT_PAGE));
    count += page.jobs.length;
    cursor = page.next_cursor;
  } while (cursor && count < COUNT_AT_MOST);
  return { count, more: Boolean(cursor) };
}

export async function deleteMatching(filter, where, description) {
  const { count, more } = await countMatching(filter);
  const named = more ? `at least ${plural(count, "job")}` : plural(count, "job");
  return confirmDelete(`Delete ${named}`,
    `${description}: ${named} and their history. This cannot be undone.`,
    async (progress) => {
      const total = { deleted: 0, refused_ids: [] };
      let cursor = null;
      do {
        const answer = await post("/v1/jobs/commands",
          { command: "delete", where, ...(cursor ? { cursor } : {}) });
        total.deleted += answer.deleted || 0;
        total.refused_ids.push(...(answer.refused_ids || []));
        cursor = answer.next_cursor;
        progress(cursor ? `${plural(total.deleted, "job")} deleted so far…` : "");
      } while (cursor);
      return total;
    });
}

export function deleteSummary(result) {
  const refused = (result.refused_ids || []).length;
  return `${plural(result.deleted || 0, "job")} deleted`
    + (refused ? `, ${plural(refused, "job")} refused (not ended or gone)` : "");
}
