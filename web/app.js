// The auditd search page. Plain JavaScript, no build step: it talks to the
// /v1 HTTP API with the token the user pasted, keeps every filter in the
// URL, and renders every event field as text (textContent), never as HTML:
// audit data is written by whoever called the audited service.

const TOKEN_KEY = "auditd.token";
const PAGE_SIZE = 50;
const HISTOGRAM_BARS = 60;

const COLUMNS = [
  ["time", "Time", (e) => formatTime(e.time)],
  ["action", "Action", (e) => e.action],
  ["status", "Status", (e) => (e.status ? String(e.status) : "")],
  ["subject", "Subject", (e) => e.subject || ""],
  ["accessId", "Access", (e) => e.accessId || ""],
  ["ip", "IP", (e) => (e.source && e.source.ip) || ""],
  ["resource", "Resource", (e) => e.resource || ""],
  ["type", "Type", (e) => e.type || ""],
  ["sourceName", "Source", (e) => (e.source && e.source.name) || ""],
  ["errorId", "Error", (e) => e.errorId || ""],
  ["id", "Id", (e) => e.id],
  ["seq", "Seq", (e) => (e.seq === undefined ? "" : String(e.seq))],
];
const DEFAULT_COLUMNS = ["time", "action", "status", "subject", "accessId", "ip", "resource"];

// Interval choices for the histogram, in seconds, smallest first.
const INTERVALS = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400, 604800, 2592000, 31536000];
const RANGES = { "15m": 900, "1h": 3600, "24h": 86400, "7d": 604800, "30d": 2592000 };

const $ = (id) => document.getElementById(id);

let state = readUrl();
let nextPageToken = "";
let shown = [];
let live = null; // the AbortController of the live tail

// ---------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function formatTime(seconds) {
  if (seconds === undefined || seconds === null) return "";
  return new Date(seconds * 1000).toISOString().replace("T", " ").replace("Z", " UTC");
}

function toLocalInput(seconds) {
  return new Date(seconds * 1000).toISOString().slice(0, 19);
}

function fromLocalInput(value) {
  if (!value) return null;
  const ms = Date.parse(value.length === 16 ? value + ":00Z" : value + "Z");
  return Number.isNaN(ms) ? null : ms / 1000;
}

function say(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

// ------------------------------------------------------------------ state

function readUrl() {
  const p = new URLSearchParams(location.search);
  return {
    range: p.get("range") || "24h",
    from: p.get("from") ? Number(p.get("from")) : null,
    to: p.get("to") ? Number(p.get("to")) : null,
    text: p.get("text") || "",
    action: p.get("action") || "",
    access: p.get("access") || "",
    subject: p.get("subject") || "",
    ip: p.get("ip") || "",
    outcome: p.get("outcome") || "",
    statusMin: p.get("statusMin") || "",
    statusMax: p.get("statusMax") || "",
    query: p.get("query") || "",
    ascending: p.get("ascending") === "true",
    columns: p.get("columns") ? p.get("columns").split(",") : DEFAULT_COLUMNS.slice(),
  };
}

function writeUrl() {
  const p = new URLSearchParams();
  for (const key of ["range", "text", "action", "access", "subject", "ip", "outcome", "statusMin", "statusMax", "query"]) {
    if (state[key]) p.set(key, state[key]);
  }
  if (state.range === "custom") {
    if (state.from !== null) p.set("from", String(state.from));
    if (state.to !== null) p.set("to", String(state.to));
  }
  if (state.ascending) p.set("ascending", "true");
  if (state.columns.join(",") !== DEFAULT_COLUMNS.join(",")) p.set("columns", state.columns.join(","));
  history.replaceState(null, "", "?" + p.toString());
}

function formToState() {
  state.range = $("range").value;
  state.from = fromLocalInput($("from").value);
  state.to = fromLocalInput($("to").value);
  for (const [key, id] of [["text", "text"], ["action", "action"], ["access", "access"], ["subject", "subject"],
    ["ip", "ip"], ["outcome", "outcome"], ["statusMin", "status-min"], ["statusMax", "status-max"], ["query", "query"]]) {
    state[key] = $(id).value.trim();
  }
}

function stateToForm() {
  $("range").value = state.range;
  $("from").value = state.from !== null ? toLocalInput(state.from) : "";
  $("to").value = state.to !== null ? toLocalInput(state.to) : "";
  for (const [key, id] of [["text", "text"], ["action", "action"], ["access", "access"], ["subject", "subject"],
    ["ip", "ip"], ["outcome", "outcome"], ["statusMin", "status-min"], ["statusMax", "status-max"], ["query", "query"]]) {
    $(id).value = state[key];
  }
  document.body.classList.toggle("custom", state.range === "custom");
  $("sort").textContent = state.ascending ? "Oldest first" : "Newest first";
}

// The time window [from, to) the state means, in seconds (null: open).
function window_() {
  if (state.range === "custom") return [state.from, state.to];
  if (state.range === "all") return [null, null];
  const now = Date.now() / 1000;
  return [now - (RANGES[state.range] || 86400), null];
}

// The filter as query parameters of /v1/events, /v1/tail and /v1/export.
function filterParams() {
  const p = new URLSearchParams();
  const [from, to] = window_();
  if (from !== null) p.set("fromTime", from.toFixed(6));
  if (to !== null) p.set("toTime", to.toFixed(6));
  const pairs = [["text", "text"], ["action", "action"], ["accessId", "access"], ["subject", "subject"],
    ["ip", "ip"], ["outcome", "outcome"], ["statusMin", "statusMin"], ["statusMax", "statusMax"], ["query", "query"]];
  for (const [param, key] of pairs) if (state[key]) p.set(param, state[key]);
  return p;
}

// The same filter as the JSON body of /v1/aggregate.
function filterJson() {
  const [from, to] = window_();
  const f = {};
  if (from !== null) f.fromTime = from;
  if (to !== null) f.toTime = to;
  if (state.text) f.text = state.text;
  if (state.action) f.actions = [state.action];
  if (state.access) f.accessIds = [state.access];
  if (state.subject) f.subjects = [state.subject];
  if (state.ip) f.ips = [state.ip];
  if (state.outcome) f.outcome = state.outcome;
  if (state.statusMin) f.statusMin = Number(state.statusMin);
  if (state.statusMax) f.statusMax = Number(state.statusMax);
  if (state.query) f.query = state.query;
  return f;
}

// -------------------------------------------------------------------- API

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token() }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    signOut("The token was refused: sign in again.");
    throw new Error("unauthenticated");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const problem = await response.json();
      detail = problem.detail || detail;
    } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

// ---------------------------------------------------------------- sign-in

function signIn(secret) {
  sessionStorage.setItem(TOKEN_KEY, secret);
  show();
}

function signOut(message = "") {
  stopLive();
  sessionStorage.removeItem(TOKEN_KEY);
  $("sign-in-error").textContent = message;
  show();
}

function show() {
  const signedIn = Boolean(token());
  $("sign-in").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  if (signedIn) {
    stateToForm();
    run();
  } else {
    $("token").value = "";
    $("token").focus();
  }
}

// ------------------------------------------------------------------ search

async function run() {
  writeUrl();
  stopLive();
  closeDetail();
  say("Searching…");
  try {
    await Promise.all([search(false), analyse()]);
    say("");
  } catch (error) {
    if (error.message !== "unauthenticated") say(error.message, true);
  }
  // How many searches have finished: what a test (or a curious user)
  // waits on.
  document.body.dataset.searches = String(Number(document.body.dataset.searches || 0) + 1);
  if ($("live").checked) startLive();
}

async function search(more) {
  const p = filterParams();
  p.set("limit", String(PAGE_SIZE));
  if (state.ascending) p.set("ascending", "true");
  if (more && nextPageToken) p.set("pageToken", nextPageToken);
  const page = await (await api("/v1/events?" + p.toString())).json();
  if (!more) shown = [];
  shown.push(...page.events);
  nextPageToken = page.nextPageToken;
  $("more").hidden = !nextPageToken;
  $("total").textContent = page.totalHitsIsLowerBound
    ? `at least ${page.totalHits.toLocaleString("en")} matches`
    : `${page.totalHits.toLocaleString("en")} matches`;
  $("total").dataset.total = String(page.totalHits);
  renderTable();
}

function renderHead() {
  const head = $("results-head");
  head.replaceChildren();
  for (const [key, label] of COLUMNS) {
    if (state.columns.includes(key)) head.append(el("th", { scope: "col" }, label));
  }
}

function row(event) {
  const tr = el("tr", { tabindex: "0", "data-id": event.id });
  for (const [key, , value] of COLUMNS) {
    if (!state.columns.includes(key)) continue;
    const td = el("td", {}, value(event));
    if (key === "status" && event.status) td.className = event.status >= 400 ? "failure" : "success";
    tr.append(td);
  }
  tr.addEventListener("click", () => openDetail(event));
  tr.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      openDetail(event);
    }
  });
  return tr;
}

function renderTable() {
  renderHead();
  $("results-body").replaceChildren(...shown.map(row));
}

function renderColumnChooser() {
  const box = $("columns");
  for (const [key, label] of COLUMNS) {
    const id = "column-" + key;
    const input = el("input", { type: "checkbox", id, value: key });
    input.checked = state.columns.includes(key);
    input.addEventListener("change", () => {
      state.columns = COLUMNS.map(([k]) => k).filter((k) => $("column-" + k).checked);
      writeUrl();
      renderTable();
    });
    box.append(el("div", { class: "check" }, input, el("label", { for: id }, label)));
  }
}

// --------------------------------------------------- histogram and facets

function interval(span) {
  const wanted = span / HISTOGRAM_BARS;
  return INTERVALS.find((i) => i >= wanted) || INTERVALS[INTERVALS.length - 1];
}

async function analyse() {
  const [from, to] = window_();
  const span = (to ?? Date.now() / 1000) - (from ?? 0);
  const body = {
    filter: filterJson(),
    aggregations: [
      { name: "histogram", dateHistogram: { interval: from === null ? 2592000 : interval(span) } },
      { name: "actions", terms: { field: "action", size: 10 } },
      { name: "ips", terms: { field: "ip", size: 10 } },
      { name: "status", terms: { field: "status", size: 500 } },
    ],
  };
  let answer;
  try {
    answer = await (await api("/v1/aggregate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    })).json();
  } catch (error) {
    // All of time with a wide spread of dates: yearly bars.
    if (from !== null || error.message === "unauthenticated") throw error;
    body.aggregations[0].dateHistogram.interval = 31536000;
    answer = await (await api("/v1/aggregate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    })).json();
  }
  renderHistogram(answer.results.histogram.buckets, body.aggregations[0].dateHistogram.interval);
  renderFacets(answer.results);
}

function renderHistogram(buckets, step) {
  const chart = $("histogram");
  chart.replaceChildren();
  chart.dataset.step = String(step);
  if (buckets.length === 0) {
    chart.dataset.start = "";
    $("histogram-summary").textContent = "No matches in this range.";
    return;
  }
  const largest = Math.max(...buckets.map((b) => b.count), 1);
  const width = 1000 / buckets.length;
  chart.dataset.start = String(buckets[0].start);
  chart.dataset.end = String(buckets[buckets.length - 1].start + step);
  buckets.forEach((bucket, i) => {
    const height = (bucket.count / largest) * 110;
    const bar = svg("rect", { x: i * width + 0.5, y: 120 - height, width: Math.max(width - 1, 0.5), height, class: "bar" });
    const title = svg("title");
    title.textContent = `${formatTime(bucket.start)}: ${bucket.count}`;
    bar.append(title);
    chart.append(bar);
  });
  chart.append(svg("rect", { id: "brush", x: 0, y: 0, width: 0, height: 120, class: "brush" }));
  $("histogram-summary").textContent =
    `${buckets.length} bars of ${step >= 86400 ? step / 86400 + " d" : step >= 3600 ? step / 3600 + " h" : step >= 60 ? step / 60 + " min" : step + " s"}` +
    ` from ${formatTime(buckets[0].start)}. Drag across the histogram to narrow the time range.`;
}

function enableBrush() {
  const chart = $("histogram");
  let startX = null;
  const toX = (event) => {
    const box = chart.getBoundingClientRect();
    return Math.min(Math.max((event.clientX - box.left) / box.width, 0), 1);
  };
  chart.addEventListener("pointerdown", (event) => {
    if (!chart.dataset.start) return;
    startX = toX(event);
    chart.setPointerCapture(event.pointerId);
  });
  chart.addEventListener("pointermove", (event) => {
    if (startX === null) return;
    const x = toX(event);
    const brush = $("brush");
    if (brush) {
      brush.setAttribute("x", String(Math.min(startX, x) * 1000));
      brush.setAttribute("width", String(Math.abs(x - startX) * 1000));
    }
  });
  chart.addEventListener("pointerup", (event) => {
    if (startX === null) return;
    const x = toX(event);
    const [a, b] = [Math.min(startX, x), Math.max(startX, x)];
    startX = null;
    if (b - a < 0.005) return;
    const start = Number(chart.dataset.start);
    const end = Number(chart.dataset.end);
    state.range = "custom";
    state.from = Math.floor(start + a * (end - start));
    state.to = Math.ceil(start + b * (end - start));
    stateToForm();
    run();
  });
}

function facetList(id, items) {
  const list = $(id);
  list.replaceChildren(...items.map(([label, count, apply]) => {
    const button = el("button", { type: "button", class: "facet" },
      el("span", { class: "facet-key" }, label), el("span", { class: "count" }, count.toLocaleString("en")));
    button.addEventListener("click", () => {
      apply();
      stateToForm();
      run();
    });
    return el("li", {}, button);
  }));
  if (items.length === 0) list.append(el("li", { class: "hint" }, "none"));
}

function renderFacets(results) {
  facetList("facet-actions", results.actions.buckets.map((b) => [b.key, b.count, () => { state.action = b.key; }]));
  facetList("facet-ips", results.ips.buckets.map((b) => [b.key, b.count, () => { state.ip = b.key; }]));
  const classes = new Map();
  for (const b of results.status.buckets) {
    const cls = Math.floor(Number(b.key) / 100);
    classes.set(cls, (classes.get(cls) || 0) + b.count);
  }
  const sorted = [...classes.entries()].sort((x, y) => y[1] - x[1]);
  facetList("facet-status", sorted.map(([cls, count]) => [`${cls}xx`, count, () => {
    state.statusMin = String(cls * 100);
    state.statusMax = String(cls * 100 + 99);
    state.outcome = "";
  }]));
  $("action-suggestions").replaceChildren(...results.actions.buckets.map((b) => el("option", { value: b.key })));
}

// ------------------------------------------------------------------ detail

function fields(event) {
  const out = [];
  for (const [key, value] of Object.entries(event)) {
    if (key === "before" || key === "after") continue;
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) out.push([`${key}.${k}`, String(v)]);
    } else if (Array.isArray(value)) {
      out.push([key, value.join(", ")]);
    } else if (key === "time" || key === "received") {
      out.push([key, `${formatTime(value)} (${value})`]);
    } else {
      out.push([key, String(value)]);
    }
  }
  return out;
}

function pretty(text) {
  if (!text) return [];
  try {
    return JSON.stringify(JSON.parse(text), null, 2).split("\n");
  } catch (_) {
    return text.split("\n");
  }
}

// A line diff (longest common subsequence): [" ", line], ["-", line], ["+", line].
function diff(a, b) {
  const n = a.length, m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { out.push([" ", a[i]]); i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) out.push(["-", a[i++]]);
    else out.push(["+", b[j++]]);
  }
  while (i < n) out.push(["-", a[i++]]);
  while (j < m) out.push(["+", b[j++]]);
  return out;
}

function openDetail(event) {
  const list = $("detail-fields");
  list.replaceChildren();
  for (const [key, value] of fields(event)) list.append(el("dt", {}, key), el("dd", {}, value));
  const lines = diff(pretty(event.before), pretty(event.after));
  $("detail-diff").replaceChildren(...(lines.length === 0
    ? [el("span", { class: "hint" }, "no before or after")]
    : lines.map(([mark, line]) => el("span", { class: mark === "+" ? "added" : mark === "-" ? "removed" : "same" }, `${mark} ${line}`))));
  const links = $("detail-links");
  links.replaceChildren();
  const link = (label, apply) => {
    const button = el("button", { type: "button" }, label);
    button.addEventListener("click", () => { apply(); stateToForm(); run(); });
    links.append(button);
  };
  if (event.accessId) link("Filter by this access", () => { state.access = event.accessId; });
  if (event.subject) link("Filter by this subject", () => { state.subject = event.subject; });
  if (event.source && event.source.ip) link("Filter by this IP", () => { state.ip = event.source.ip; });
  $("detail").hidden = false;
  $("detail-title").textContent = "Event " + event.id;
  $("detail-close").focus();
}

function closeDetail() {
  $("detail").hidden = true;
}

// -------------------------------------------------------------------- live

function stopLive() {
  if (live) live.abort();
  live = null;
  delete document.body.dataset.live;
}

// Follows /v1/tail (Server-Sent Events, read with fetch so that the token
// travels in the Authorization header) and puts each new event on top.
async function startLive() {
  stopLive();
  const controller = new AbortController();
  live = controller;
  const p = filterParams();
  p.delete("fromTime");
  p.delete("toTime");
  say("Live: new matching events appear at the top.");
  try {
    const response = await api("/v1/tail?" + p.toString(), { signal: controller.signal });
    document.body.dataset.live = "following";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        const kind = block.split("\n").find((l) => l.startsWith("event:"));
        if (!data) continue;
        if (kind && kind.includes("error")) throw new Error(JSON.parse(data).detail);
        const event = JSON.parse(data);
        shown.unshift(event);
        $("results-body").prepend(row(event));
      }
    }
  } catch (error) {
    if (controller.signal.aborted) return;
    if (error.message !== "unauthenticated") say("Live stopped: " + error.message, true);
    $("live").checked = false;
  }
  if (live === controller) live = null;
  delete document.body.dataset.live;
}

// ------------------------------------------------------------------ export

async function exportAll() {
  const format = $("export-format").value;
  const p = filterParams();
  p.set("format", format);
  if (state.ascending) p.set("ascending", "true");
  say("Exporting…");
  try {
    const response = await api("/v1/export?" + p.toString());
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: `auditd-export.${format === "csv" || format === "cef" ? format : "ndjson"}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    say(`Exported (${blob.size.toLocaleString("en")} bytes).`);
  } catch (error) {
    if (error.message !== "unauthenticated") say("Export failed: " + error.message, true);
  }
}

// ------------------------------------------------------------------- start

function start() {
  renderColumnChooser();
  enableBrush();
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const secret = $("token").value.trim();
    if (secret) signIn(secret);
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    formToState();
    run();
  });
  $("range").addEventListener("change", () => {
    document.body.classList.toggle("custom", $("range").value === "custom");
  });
  $("clear").addEventListener("click", () => {
    const columns = state.columns;
    history.replaceState(null, "", "?");
    state = readUrl();
    state.columns = columns;
    stateToForm();
    run();
  });
  $("sort").addEventListener("click", () => {
    state.ascending = !state.ascending;
    stateToForm();
    run();
  });
  $("more").addEventListener("click", () => search(true).catch((error) => say(error.message, true)));
  $("live").addEventListener("change", () => ($("live").checked ? startLive() : (stopLive(), say(""))));
  $("export").addEventListener("click", exportAll);
  $("detail-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !$("detail").hidden) closeDetail();
  });
  show();
}

start();
