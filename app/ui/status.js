// What the dashboard calls a job's state: one vocabulary for the rows, the job
// page and the overview, decided here and nowhere else.
//
// job.state is what was requested; a worker tells what it does through its
// heartbeats. A pending transition ("pausing…", "resuming…") is shown only
// while an answer can be expected:
//  - the worker reports observed_state (it has sent one at least once; old-style
//    workers that heartbeat only progress never do, and for them the requested
//    state is shown as it is), and
//  - it has been heard from within its heartbeat timeout (ANSWER_WAIT_S when the
//    job has none), counted from its last heartbeat or the command, whichever
//    is later: a silent worker will not answer.
// A final state (killed, done, failed) is never pending: the service has ended
// the job whatever its worker does next, so it is shown as it is at once.

import { serverNow } from "./api.js";

const ANSWER_WAIT_S = 60;

export const WORDS = {
  waiting: "waiting for a worker", running: "running", stalled: "stalled",
  paused: "paused", killed: "killed", done: "done", failed: "failed",
  resuming: "resuming…", pausing: "pausing…",
};
// The requested states a job never leaves: it has ended.
export const FINAL_STATES = new Set(["kill", "done", "failed"]);

const SETTLED = { start: "running", pause: "paused", kill: "killed", done: "done",
  failed: "failed" };
const PENDING = { start: "resuming", pause: "pausing" };  // never a final state

// The worker has said which state it is in at least once.
export function reportsObservedState(job) {
  return Boolean(job.observed_state);
}

function heardFromRecently(job) {
  const last = Math.max(Date.parse(job.heartbeat_at) || 0, Date.parse(job.updated_at) || 0);
  const wait = (job.heartbeat_timeout || ANSWER_WAIT_S) * 1000;
  return serverNow() - last <= wait;
}

// kind: a key of WORDS. pending: a transition the worker has yet to make;
// awaiting: the same, worth re-reading the job for (its answer comes with a
// heartbeat, which does not change the version the watch follows).
export function status(job) {
  const pending = job.state in PENDING && reportsObservedState(job)
    && job.observed_state !== job.state && heardFromRecently(job);
  let kind;
  if (job.state === "start" && job.stalled) kind = "stalled";
  else if (pending) kind = PENDING[job.state];
  else if (job.state === "start" && !job.heartbeat_at) kind = "waiting";
  else kind = SETTLED[job.state] || job.state;
  const awaiting = pending && kind !== "stalled";
  return { kind, text: WORDS[kind] || kind, pending: awaiting, awaiting };
}

// The overview's counts, in the same words, each with the filter whose rows it
// counts. /v1/stats counts requested states, stalled jobs and the jobs waiting
// for a worker (requested start, no heartbeat yet, not stalled); running is
// the rest of requested start. The counts add up to the total.
export function overviewCounts(stats) {
  const states = stats.states;
  const waiting = stats.waiting || 0;
  return [
    { name: WORDS.waiting, key: "waiting", count: waiting,
      title: "requested start, no heartbeat yet, not stalled",
      filter: { state: "start", started: "false", stalled: "false" } },
    { name: WORDS.running, key: "running",
      count: Math.max(0, (states.start || 0) - stats.stalled - waiting),
      title: "requested start, heard from within the heartbeat timeout: rows say running "
        + "or resuming…",
      filter: { state: "start", started: "true", stalled: "false" } },
    { name: WORDS.stalled, key: "stalled", count: stats.stalled,
      title: "requested start, and no heartbeat within the job's heartbeat timeout",
      filter: { stalled: "true" } },
    ...["pause", "kill", "done", "failed"].map((state) => ({
      name: WORDS[SETTLED[state]], key: SETTLED[state], count: states[state] || 0,
      title: state in PENDING ? `requested ${state}: rows say ${WORDS[SETTLED[state]]} or `
        + `${WORDS[PENDING[state]]}` : `ended ${state}`,
      filter: { state } })),
  ];
}
