// Building DOM. Values from users (names, labels, reasons, worker names) only
// ever go in as text nodes; nothing here parses strings as markup.

import { serverNow } from "./api.js";
import { status } from "./status.js";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function age(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, Math.round((serverNow() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

// One convention for times, the dashboard's and the CLI's: the reader's local
// time in ISO 8601 order, to the second, with its UTC offset
// ("2026-05-04 15:02:07 +02:00"); the exact value the API gave is the title.
// The CLI's side is karmchari_client.cli_output.local_time.
const pad = (n) => String(n).padStart(2, "0");

export function localTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const offset = -d.getTimezoneOffset();  // minutes east of UTC
  const zone = `${offset < 0 ? "-" : "+"}${pad(Math.floor(Math.abs(offset) / 60))}:`
    + pad(Math.abs(offset) % 60);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} ${zone}`;
}

// The local time of day, for the chart's minutes ("15:02").
export function localMinute(iso) {
  return localTime(iso).slice(11, 16);
}

export function time(iso) {
  if (!iso) return el("span", { class: "muted" }, "–");
  return el("time", { datetime: iso, title: iso }, localTime(iso));
}

// "n thing" or "n things".
export function plural(count, one, many = `${one}s`) {
  return `${count.toLocaleString("en")} ${count === 1 ? one : many}`;
}

export function progressBar(progress) {
  if (progress === null || progress === undefined) return el("span", { class: "muted" }, "–");
  const shown = `${Math.round(progress)}%`;  // a percentage, 0 to 100
  return el("span", { class: "progress" },
    el("progress", { max: "100", value: String(progress), "aria-label": `progress ${shown}` }),
    el("span", { class: "progress-text" }, shown));
}

export function labelChips(labels) {
  return el("span", { class: "labels" },
    Object.entries(labels || {}).map(([k, v]) => el("span", { class: "chip" }, `${k}:${v}`)));
}

export function stateChip(job) {
  const s = status(job);
  return el("span", { class: `state state-${s.kind}${s.pending ? " pending" : ""}`,
    dataset: { status: s.kind } }, s.text);
}
