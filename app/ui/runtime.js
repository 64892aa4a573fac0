// Run time: from a job's first heartbeat (started_at) to its final state
// (finished_at), or to now while it has not ended. A job no worker ever
// picked up has none; neither has a job from a service that does not report
// started_at (before API 20), which shows "–" rather than a guess.

import { serverNow } from "./api.js";
import { el } from "./dom.js";

export function runSeconds(job, nowMs = serverNow()) {
  const start = Date.parse(job.started_at || "");
  if (Number.isNaN(start)) return null;
  const end = job.finished_at ? Date.parse(job.finished_at) : nowMs;
  return Number.isNaN(end) ? null : Math.max(0, Math.round((end - start) / 1000));
}

const pad = (n) => String(n).padStart(2, "0");

// "42 s", "3 min 05 s", "2 h 04 min", "3 d 4 h": two units at most.
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 10) return `${Number(seconds.toFixed(1))} s`;  // a median may be 0.4 s
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${pad(Math.floor(s / 60) % 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor(s / 3600) % 24} h`;
}

// The cell or field: ticks while the job runs (see refreshRunTimes).
export function runTime(job) {
  const seconds = runSeconds(job);
  const title = !("started_at" in job) ? "this service does not report when jobs start"
    : !job.started_at ? "no heartbeat yet: not started"
    : job.finished_at ? `from ${job.started_at} to ${job.finished_at}`
      : `since ${job.started_at}, still going`;
  return el("span", { class: `runtime${seconds === null ? " muted" : ""}`, title,
    dataset: { started: job.started_at || "", finished: job.finished_at || "" } },
  duration(seconds));
}

// Redraws the run times of jobs that have not ended, from the clock alone.
export function refreshRunTimes(root = document) {
  for (const span of root.querySelectorAll(".runtime[data-finished='']")) {
    if (!span.dataset.started) continue;
    span.textContent = duration(runSeconds({ started_at: span.dataset.started }));
  }
}
