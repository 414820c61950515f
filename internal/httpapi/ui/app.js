// spool's read-only job page: plain JavaScript on the ingress API. With auth
// on, the API key is asked for once and kept for this tab (sessionStorage).
"use strict";

const $ = (sel) => document.querySelector(sel);
const keyName = "spool-api-key";
const failuresShown = 1000;
let refresh = null;

function apiKey() { return sessionStorage.getItem(keyName) || ""; }

async function api(path) {
  const headers = {};
  if (apiKey()) headers.Authorization = "Bearer " + apiKey();
  const res = await fetch(path, { headers });
  if (res.status === 401) {
    $("#key-form").hidden = false;
    throw new Error(apiKey() ? "The API key was refused." : "This server needs an API key.");
  }
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: ${res.status} ${detail}`);
  }
  return res;
}

function showError(err) {
  const p = $("#error");
  p.textContent = err ? String(err.message || err) : "";
  p.hidden = !err;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function stateBadge(state) {
  const s = document.createElement("span");
  s.className = "state " + state;
  s.textContent = state.replaceAll("_", " ");
  return s;
}

function progressBar(job, big) {
  const outer = document.createElement("div");
  outer.className = "progress" + (big ? " big" : "");
  if (job.state === "completed") outer.classList.add("done");
  if (job.state === "completed_with_errors" || job.state === "failed") outer.classList.add("errors");
  const inner = document.createElement("div");
  inner.style.width = (job.progress * 100).toFixed(1) + "%";
  outer.title = (job.progress * 100).toFixed(1) + "%";
  outer.appendChild(inner);
  return outer;
}

const num = (n) => Number(n).toLocaleString("en");
const when = (t) => (t ? new Date(t).toLocaleString() : "");
const finished = (s) => s === "completed" || s === "completed_with_errors" || s === "failed" || s === "aborted";

function classTable(tbody, empty, counts) {
  tbody.replaceChildren();
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  for (const [cls, n] of entries) {
    const row = tbody.insertRow();
    cell(row, cls);
    cell(row, num(n), "n");
  }
  empty.hidden = entries.length > 0;
}

// The jobs list. A refresh reloads the first page only while no older page
// was asked for, and the dead-letter counts only when the view is entered.
let cursor = "";
let olderPages = 0;

async function loadJobs(append, refresh) {
  const state = $("#state-filter").value;
  const q = new URLSearchParams({ limit: "50" });
  if (state) q.set("state", state);
  if (append && cursor) q.set("cursor", cursor);
  const page = await (await api("/v1/jobs?" + q)).json();
  const tbody = $("#jobs tbody");
  if (!append) tbody.replaceChildren();
  for (const j of page.jobs) {
    const row = tbody.insertRow();
    row.dataset.job = j.job_id;
    const a = document.createElement("a");
    a.href = "#/jobs/" + encodeURIComponent(j.job_id);
    a.textContent = j.job_id;
    const id = row.insertCell();
    const code = document.createElement("code");
    code.appendChild(a);
    id.appendChild(code);
    row.insertCell().appendChild(stateBadge(j.state));
    row.insertCell().appendChild(progressBar(j));
    cell(row, num(j.counts.received), "n");
    cell(row, num(j.counts.applied), "n");
    cell(row, num(j.counts.rejected), "n");
    cell(row, num(j.counts.dead_lettered), "n");
    cell(row, when(j.created_at));
  }
  cursor = page.next_cursor || "";
  $("#more").hidden = !cursor;
  $("#no-jobs").hidden = tbody.rows.length > 0;
  if (!refresh) {
    const dead = await (await api("/v1/dead-letters")).json();
    classTable($("#dead-letters tbody"), $("#no-dead"), dead.by_error_class);
  }
  return olderPages === 0 && page.jobs.some((j) => !finished(j.state) || j.progress < 1);
}

// One job. Its failures are read again only when their count changed.
let failuresShownFor = "";

async function loadJob(id) {
  const path = "/v1/jobs/" + encodeURIComponent(id);
  const j = await (await api(path)).json();
  $("#job-id").textContent = j.job_id;
  $("#job-state").replaceWith(Object.assign(stateBadge(j.state), { id: "job-state" }));
  $("#job-times").textContent = "created " + when(j.created_at) + (j.completed_at ? " · finished " + when(j.completed_at) : "");
  $("#job-progress").parentElement.replaceWith(progressBar(j, true));
  $(".progress.big > div").id = "job-progress";
  $("#job-error").textContent = j.error || "";
  $("#job-error").hidden = !j.error;
  const counts = $("#counts tbody");
  counts.replaceChildren();
  const c = j.counts;
  for (const [name, n] of [["received", c.received], ["rejected", c.rejected], ["accepted", c.accepted],
    ["applied", c.applied], ["duplicate", c.duplicate], ["stale", c.stale], ["conflict", c.conflict],
    ["exists", c.exists], ["missing", c.missing], ["aborted", c.aborted],
    ["dead-lettered", c.dead_lettered], ["progress", (j.progress * 100).toFixed(1) + "%"]]) {
    const row = counts.insertRow();
    cell(row, name);
    cell(row, typeof n === "number" ? num(n) : n, "n");
  }
  const key = j.job_id + "/" + (c.rejected + c.conflict + c.dead_lettered);
  if (key !== failuresShownFor) {
    await loadFailures(path + "/failures");
    failuresShownFor = key;
  }
  return !finished(j.state) || j.progress < 1; // an aborted or failed job counts in still
}

// loadFailures reads the NDJSON listing as it streams, shows the first
// rows and counts the rest, and groups dead letters by error class.
async function loadFailures(path) {
  const res = await api(path + "?format=ndjson");
  const tbody = $("#failures tbody");
  tbody.replaceChildren();
  const dead = {};
  let total = 0;
  let rest = "";
  const take = (line) => {
    if (!line.trim()) return;
    const f = JSON.parse(line);
    total++;
    if (f.outcome === "dead_lettered") dead[f.error_class] = (dead[f.error_class] || 0) + 1;
    if (total > failuresShown) return;
    const row = tbody.insertRow();
    cell(row, String(f.index), "n");
    cell(row, f.id);
    cell(row, f.stage);
    cell(row, f.outcome.replaceAll("_", " "));
    cell(row, f.error_class);
    cell(row, f.error);
  };
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    const lines = (rest + decoder.decode(value, { stream: true })).split("\n");
    rest = lines.pop();
    lines.forEach(take);
  }
  take(rest);
  classTable($("#job-dead tbody"), $("#job-no-dead"), dead);
  $("#failures-note").textContent = total === 0 ? "No failures."
    : total > failuresShown ? `Showing the first ${num(failuresShown)} of ${num(total)} failures; download the rest.`
    : `${num(total)} failures.`;
}

async function download(path, format) {
  const res = await api(path + "?format=" + format);
  const url = URL.createObjectURL(await res.blob());
  const a = Object.assign(document.createElement("a"), { href: url, download: `failures.${format === "csv" ? "csv" : "ndjson"}` });
  a.click();
  URL.revokeObjectURL(url);
}

// jobFromHash is the job id of a #/jobs/ID location, or "".
function jobFromHash() {
  const m = location.hash.match(/^#\/jobs\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : "";
}

// route shows the view of the location; again is a refresh of the same view.
async function route(again) {
  clearTimeout(refresh);
  showError(null);
  const id = jobFromHash();
  $("#jobs-view").hidden = !!id;
  $("#job-view").hidden = !id;
  $("#forget-key").hidden = !apiKey();
  if (!again) {
    failuresShownFor = "";
    olderPages = 0;
  }
  try {
    const busy = id ? await loadJob(id) : await loadJobs(false, again);
    if (busy) refresh = setTimeout(() => route(true), 2000);
  } catch (err) {
    showError(err);
  }
}

$("#key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(keyName, $("#key").value.trim());
  $("#key").value = "";
  $("#key-form").hidden = true;
  route(false);
});
$("#forget-key").addEventListener("click", () => { sessionStorage.removeItem(keyName); route(false); });
$("#state-filter").addEventListener("change", () => route(false));
$("#more").addEventListener("click", () => {
  olderPages++;
  clearTimeout(refresh);
  loadJobs(true, true).catch(showError);
});
for (const format of ["csv", "ndjson"]) {
  $("#dl-" + format).addEventListener("click", (e) => {
    e.preventDefault();
    const id = jobFromHash();
    if (id) download("/v1/jobs/" + encodeURIComponent(id) + "/failures", format).catch(showError);
  });
}
window.addEventListener("hashchange", () => route(false));
route(false);
