// Start-up, sign-in and routing (#/?filters for the list, #/jobs/<id> for a job).

import { setRole } from "./actions.js";
import { ApiError, get, setToken, token, whenUnauthorized } from "./api.js";
import * as jobPage from "./jobpage.js";
import * as jobs from "./jobs.js";
import { notify } from "./notice.js";
import { loadStats, renderStats, showStatsUnavailable } from "./overview.js";
import * as workers from "./workers.js";

const STATS_EVERY_MS = 15000;  // the slow refresh of the counts; rows are live

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

const VIEWS = { list: "list-view", job: "job-view", workers: "workers-view" };

function showView(name) {
  for (const [view, id] of Object.entries(VIEWS)) {
    document.getElementById(id).hidden = view !== name;
  }
  // The header's links say which view is shown (a job belongs to the jobs).
  const current = name === "workers" ? "nav-workers" : "nav-jobs";
  for (const id of ["nav-jobs", "nav-workers"]) {
    if (id === current) document.getElementById(id).setAttribute("aria-current", "page");
    else document.getElementById(id).removeAttribute("aria-current");
  }
}

function listQuery(hash) {
  return new URLSearchParams(hash.replace(/^#\/\??/, ""));
}

async function route(prefetched = null) {
  let hash = location.hash || "#/";
  if (!hash.startsWith("#/")) {
    // An in-page anchor (the skip link) leaves the view as it is.
    if (Object.values(VIEWS).some((id) => !document.getElementById(id).hidden)) return;
    hash = "#/";
  }
  const job = /^#\/jobs\/([0-9a-f]{32})$/.exec(hash);
  try {
    if (hash === "#/workers") {
      jobs.stopLive();
      jobPage.stopJob();
      showView("workers");
      document.title = "Workers · Karmchari";
      await workers.showWorkers();
    } else if (job) {
      jobs.stopLive();
      showView("job");
      await jobPage.showJob(job[1]);
    } else {
      jobPage.stopJob();
      showView("list");
      document.title = "Karmchari";
      await jobs.showFilter(jobs.filterFromQuery(listQuery(hash)), prefetched);
      // The frame that shows the rows (bench/ui_first_page.py reads this mark).
      requestAnimationFrame(() => performance.mark("first-page"));
    }
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) notify(error.message, true);
  }
}

// The slow refresh: counts, and heartbeats of the rows shown.
async function refreshStats(rows = true) {
  if (document.hidden || document.getElementById("list-view").hidden) return;
  if (rows) jobs.refreshRows().catch(() => {});
  try {
    const stats = await loadStats();
    renderStats(stats);
    jobs.setTypes(Object.keys(stats.types));
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      showStatsUnavailable(error.message);
    }
  }
}

// Resolves once a token the server accepts is stored.
function signIn(message = "") {
  const dialog = document.getElementById("login-dialog");
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  error.textContent = message;
  return new Promise((resolve) => {
    form.onsubmit = async (event) => {
      event.preventDefault();
      setToken(form.elements.token.value.trim());
      try {
        const who = await get("/v1/whoami");
        form.reset();
        dialog.close();
        resolve(who);
      } catch (e) {
        setToken("");
        error.textContent = e.status === 401 ? "This token is not accepted." : e.message;
      }
    };
    // The dialog cannot be dismissed: nothing works without a token.
    dialog.oncancel = (event) => event.preventDefault();
    if (!dialog.open) dialog.showModal();
  });
}

async function whoAmI() {
  try {
    return await get("/v1/whoami");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      return signIn(token() ? "The stored token is no longer accepted." : "");
    }
    throw error;
  }
}

function showWho(who) {
  document.getElementById("who").textContent = who.auth
    ? `${who.name} (${who.role})` : "no authentication";
  document.getElementById("sign-out").hidden = !who.auth;
}

async function start() {
  jobs.setUp(navigate);
  jobPage.setUp();
  workers.setUp();
  document.getElementById("sign-out").addEventListener("click", () => {
    setToken("");
    location.reload();
  });
  const hash = location.hash.startsWith("#/") ? location.hash : "#/";
  const firstPage = hash.startsWith("#/jobs/") ? null
    : jobs.prefetch(jobs.filterFromQuery(listQuery(hash)));
  let who;
  try {
    who = await whoAmI();
  } catch (error) {
    notify(`The service does not answer: ${error.message}`, true);
    return;
  }
  whenUnauthorized(async () => {
    if (document.getElementById("login-dialog").open) return;
    const again = await signIn("Your token is no longer accepted.");
    setRole(again);
    showWho(again);
    route();
  });
  setRole(who);
  showWho(who);
  jobs.setTypes(who.job_types);
  window.addEventListener("hashchange", () => route());
  await route(firstPage);  // the rows first; the counts right after
  await refreshStats(false);
  setInterval(refreshStats, STATS_EVERY_MS);
  // Nothing is refreshed in a hidden tab; coming back catches up at once.
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refreshStats();
  });
  setInterval(jobs.tickAges, 5000);
  setInterval(() => {
    if (document.hidden) return;
    if (document.getElementById("list-view").hidden) jobPage.checkAcknowledgement();
    else jobs.checkAcknowledgements();
  }, 1000);
  document.body.dataset.ready = "true";
}

start();
