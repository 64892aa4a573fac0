// Live updates: one POST /v1/watch long-poll over the jobs on screen. It
// answers as soon as one of them changes, so the page updates within
// milliseconds, and costs one waiting request per tab otherwise.

import { post } from "./api.js";

const WAIT_SECONDS = 25;

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

function indicate(state, title) {
  const badge = document.getElementById("live");
  badge.className = `live ${state}`;
  badge.title = title;
}

export class Watcher {
  // onChange(job) for each changed job, onMissing(id) for each deleted one.
  constructor(onChange, onMissing) {
    this.onChange = onChange;
    this.onMissing = onMissing;
    this.controller = null;
  }

  // versions: {id: version} of the jobs shown; replaces what was watched.
  watch(versions) {
    this.stop();
    this.versions = { ...versions };
    if (!Object.keys(this.versions).length) return;
    this.controller = new AbortController();
    this.loop(this.controller.signal);
  }

  stop() {
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  async loop(signal) {
    let backoff = 1000;
    while (!signal.aborted && Object.keys(this.versions).length) {
      try {
        indicate("on", "Updates as jobs change");
        const answer = await post("/v1/watch", { jobs: this.versions, wait: WAIT_SECONDS },
          { signal });
        if (signal.aborted) return;
        backoff = 1000;
        for (const job of answer.changed) {
          if (job.id in this.versions) this.versions[job.id] = job.version;
          this.onChange(job);
        }
        for (const id of answer.missing) {
          delete this.versions[id];
          this.onMissing(id);
        }
      } catch (error) {
        if (signal.aborted) return;
        // Too many waiters, a restart, a network blip: wait, then go on.
        indicate("off", `Live updates paused: ${error.message}`);
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, 30000);
      }
    }
  }
}
