// The overview: counts from GET /v1/stats and a chart of changes per minute.

import { get, setServerNow } from "./api.js";
import { clear, el, localMinute, plural } from "./dom.js";
import { duration } from "./runtime.js";
import { overviewCounts } from "./status.js";

const SVG = "http://www.w3.org/2000/svg";

function countItem(name, count, href, title) {
  const label = href ? el("a", { href, title }, name) : el("span", {}, name);
  return el("li", { dataset: { name } }, label, el("strong", { class: "count" },
    count.toLocaleString("en")));
}

// Until the first counts arrive the cards say so, rather than look empty.
export function showStatsUnavailable(message) {
  for (const id of ["state-counts", "type-counts", "label-counts"]) {
    const list = document.getElementById(id);
    if (list.querySelector(".loading")) {
      clear(list).append(el("li", { class: "muted" }, "unavailable"));
    }
  }
  document.getElementById("chart").textContent = `Counts unavailable: ${message}`;
  document.querySelector(".overview").removeAttribute("aria-busy");
}

function filterLink(params) {
  return `#/?${new URLSearchParams(params)}`;
}

export async function loadStats() {
  const stats = await get("/v1/stats");
  setServerNow(stats.now);
  return stats;
}

export function renderStats(stats) {
  document.querySelector(".overview").removeAttribute("aria-busy");
  document.getElementById("total-count").textContent = stats.total.toLocaleString("en");
  document.getElementById("total").hidden = false;
  clear(document.getElementById("state-counts")).append(
    ...overviewCounts(stats).map((c) => countItem(c.name, c.count, filterLink(c.filter),
      c.title)));
  clear(document.getElementById("type-counts")).append(
    ...Object.entries(stats.types).map(([t, n]) => countItem(t, n, filterLink({ type: t }))));
  const labels = Object.entries(stats.labels);
  clear(document.getElementById("label-counts")).append(
    ...(labels.length ? labels.map(([l, n]) => countItem(l, n, filterLink({ label: l })))
      : [el("li", { class: "muted" }, "no labels")]));
  drawChart(document.getElementById("chart"), stats.changes_per_minute);
  renderRunTimes(stats.run_times);
}

// Median and p95 run time of the jobs that finished in the last hour, by
// type (API 20); the card stays hidden for a service that does not count them.
function renderRunTimes(runTimes) {
  const card = document.getElementById("run-times-card");
  card.hidden = !runTimes;
  if (!runTimes) return;
  const types = Object.entries(runTimes).filter(([, t]) => t.count > 0);
  clear(document.getElementById("run-times")).append(...(types.length
    ? types.map(([type, t]) => el("tr", { dataset: { type } },
      el("th", { scope: "row" }, type), el("td", {}, duration(t.median_seconds)),
      el("td", {}, duration(t.p95_seconds)), el("td", {}, t.count.toLocaleString("en"))))
    : [el("tr", {}, el("td", { colspan: "4", class: "muted" }, "none finished"))]));
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

// One bar per minute, oldest on the left; attributes only (no style), so the
// strict CSP holds. The SVG stretches to the card; its words are HTML.
export function drawChart(container, minutes) {
  const width = 600, height = 100;
  const peak = Math.max(1, ...minutes.map((m) => m.count));
  const total = minutes.reduce((sum, m) => sum + m.count, 0);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${plural(total, "change")} in the last ${minutes.length} minutes, `
      + `at most ${peak.toLocaleString("en")} a minute`,
    class: "bars", preserveAspectRatio: "none" });
  const step = width / Math.max(1, minutes.length);
  minutes.forEach((m, i) => {
    const h = (height * m.count) / peak;
    const bar = svg("rect", { x: i * step, y: height - h, width: Math.max(1, step - 1),
      height: h, class: "bar" });
    const title = svg("title", {});
    title.textContent = `${localMinute(m.minute)}: ${plural(m.count, "change")}`;
    bar.append(title);
    chart.append(bar);
  });
  clear(container).append(chart,
    el("div", { class: "chart-axis muted small" },
      el("span", {}, `−${minutes.length} min`), el("span", {}, "now")),
    el("p", { class: "muted small" },
      `${plural(total, "change")}, at most ${peak.toLocaleString("en")} a minute`));
}
