// Open Workbench pages: plain JavaScript, no build step, no inline script (the pages' CSP is default-src 'self').
// Every action goes through the API (/api/<method>) with the sign-in cookie and the X-OWB-CSRF header, so the
// page can do exactly what the user's token can, never more.
"use strict";

// The session list waits on the server for changes (GET /live/sessions, a long-poll: see docs/web.md, Live updates).
const BUSY_POLL_MS = 500; // the server had no room for another waiting request: ask again after this, as a poll
const HIDDEN_POLL_MS = 5000; // a tab in the background holds no connection: it asks this often instead
const RETRY_MAX_MS = 16000; // after failures the next try waits 1 s, 2 s, ... up to this
const FINAL_STATES = ["suspended", "failed", "killed", "finished", "canceled"];
const FINAL_JOB = ["Finished", "Failed", "Killed", "Canceled"];

// -- helpers ---------------------------------------------------------------------------------------------------
function csrfToken() {
  const meta = document.querySelector('meta[name="owb-csrf"]');
  return meta ? meta.content : "";
}

class ApiError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

async function callRaw(method, kwparams, get) {
  const init = { method: get ? "GET" : "POST", credentials: "same-origin", headers: { "X-OWB-CSRF": csrfToken() } };
  if (!get) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify({ method: method, kwparams: kwparams || {} });
  }
  return fetch("/api/" + method, init);
}

async function api(method, kwparams, get) {
  const resp = await callRaw(method, kwparams, get);
  let body;
  try { body = await resp.json(); } catch (e) { throw new ApiError(resp.status, "The server answered " + resp.status); }
  if (body && body.error) {
    if (body.error.code === 401) { location.assign("/auth/sign-in?next=" + encodeURIComponent(location.pathname)); }
    throw new ApiError(body.error.code, body.error.message);
  }
  return body.result;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
function ago(date) {
  const seconds = Math.round((date.getTime() - Date.now()) / 1000);
  const steps = [[60, "second"], [60, "minute"], [24, "hour"], [30, "day"], [12, "month"], [Infinity, "year"]];
  let value = seconds;
  for (const [size, unit] of steps) {
    if (Math.abs(value) < size) return relative.format(Math.round(value), unit);
    value /= size;
  }
  return date.toLocaleString();
}

function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function timeNode(ms) {
  const date = new Date(ms);
  return el("time", { datetime: date.toISOString(), title: date.toLocaleString(), "data-format": "ago" }, ago(date));
}

function refreshTimes(root) {
  for (const node of (root || document).querySelectorAll('time[data-format="ago"]')) {
    const ms = node.dataset.ms ? Number(node.dataset.ms) : Date.parse(node.getAttribute("datetime"));
    if (Number.isNaN(ms)) continue;
    const date = new Date(ms);
    node.textContent = ago(date);
    node.title = date.toLocaleString();
  }
  for (const node of (root || document).querySelectorAll("[data-duration-from]")) {
    const from = Date.parse(node.dataset.durationFrom);
    const to = node.dataset.final === "yes" ? Date.parse(node.dataset.durationTo) : Date.now();
    if (!Number.isNaN(from) && !Number.isNaN(to)) node.textContent = duration(to - from);
  }
}

// A confirmation in the page's own <dialog>: resolves true when the person confirms.
function confirmAction(text, okLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel || "Confirm";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

function flash(text, isError) {
  const live = document.getElementById("live");
  if (!live) { if (isError) alert(text); return; }
  live.textContent = text;
  live.classList.toggle("error", Boolean(isError));
  clearTimeout(flash.timer);
  if (!isError) flash.timer = setTimeout(() => { live.textContent = ""; }, 6000);
}

// -- the session list (home) ---------------------------------------------------------------------------------
const pending = new Map(); // session id -> {from: state when asked, label}: the change shows at once
let sessions = [];
let envs = null;

function ideInfo(name) {
  return (envs && envs.ides.find((ide) => ide.name === name)) || { icon: "ide" };
}

function limitsText(session) {
  const limits = (session.launch_parameters && session.launch_parameters.resource_limits) || [];
  const labels = (envs && envs.limit_labels) || {};
  return limits.map((item) => (labels[item.type] || item.type) + " " + item.value).join(", ");
}

function sessionCard(session) {
  const wait = pending.get(session.id);
  const state = wait && wait.from === session.activity_state ? wait.label : session.activity_state;
  const final = FINAL_STATES.includes(session.activity_state);
  const buttons = [];
  const act = (label, kind, cls) => el("button", { type: "button", class: cls, "data-action": kind, "data-session": session.id,
                                                  "aria-label": label + " " + session.name }, label);
  if (session.activity_state === "running") {
    buttons.push(el("a", { class: "button primary", href: session.url, target: "_blank", rel: "noopener",
                           "data-action": "join", "aria-label": "Join " + session.name }, "Join"));
    buttons.push(act("Suspend", "suspend", "secondary"));
  }
  if (session.activity_state === "suspended") buttons.push(act("Resume", "resume", "primary"));
  if (!final || session.activity_state === "suspended") buttons.push(act("Stop", "stop", "secondary"));
  if (!final) buttons.push(act("Force quit", "kill", "danger"));
  const limits = limitsText(session);
  return el("article", { class: "card", "data-session": session.id, "data-state": session.activity_state,
                         "aria-labelledby": "title-" + session.id },
    el("header", {},
      el("img", { src: "/static/ide-" + ideInfo(session.workbench).icon + ".svg", alt: "", width: 32, height: 32 }),
      el("div", { class: "title" },
        el("h3", { id: "title-" + session.id }, session.name),
        el("span", { class: "ide" }, session.workbench)),
      el("span", { class: "badge state-" + session.activity_state, "data-role": "state" }, state)),
    session.status_detail ? el("p", { class: "detail", "data-role": "detail" }, session.status_detail) : null,
    el("dl", { class: "facts" },
      el("div", {}, el("dt", {}, "Cluster"), el("dd", {}, session.launch_parameters.cluster)),
      el("div", {}, el("dt", {}, "Created"), el("dd", {}, timeNode(session.created))),
      el("div", {}, el("dt", {}, "Last used"), el("dd", {}, timeNode(session.last_used))),
      limits ? el("div", {}, el("dt", {}, "Limits"), el("dd", {}, limits)) : null),
    buttons.length ? el("div", { class: "buttons" }, ...buttons) : null);
}

function renderSessions() {
  const box = document.getElementById("sessions");
  const focused = document.activeElement && document.activeElement.closest ? document.activeElement : null;
  const focusKey = focused && focused.dataset && focused.dataset.action && focused.closest("[data-session]")
    ? [focused.closest("[data-session]").dataset.session, focused.dataset.action] : null;
  const newest = sessions.slice().reverse();
  box.replaceChildren(...newest.map(sessionCard));
  document.getElementById("no-sessions").hidden = newest.length > 0;
  if (focusKey) {
    const again = box.querySelector(`[data-session="${CSS.escape(focusKey[0])}"] [data-action="${focusKey[1]}"]`);
    if (again) again.focus();
  }
}

function applySessions(list) {
  const before = JSON.stringify(sessions);
  for (const session of list) {
    const wait = pending.get(session.id);
    if (wait && wait.from !== session.activity_state) pending.delete(session.id);
  }
  sessions = list;
  if (JSON.stringify(list) !== before) renderSessions();
}

const live = { version: "", abort: null, wake: null };

function liveSleep(ms) {
  return new Promise((resolve) => {
    const done = () => { clearTimeout(timer); live.wake = null; resolve(); };
    const timer = setTimeout(done, ms);
    live.wake = done;
  });
}

// One answer of /live/sessions: after a change (or the server's wait) when ``wait``, else at once.
async function fetchLive(wait) {
  live.abort = new AbortController();
  const url = "/live/sessions" + (wait ? "?version=" + encodeURIComponent(live.version) : "");
  try {
    const resp = await fetch(url, { credentials: "same-origin", headers: { "X-OWB-CSRF": csrfToken() },
                                    signal: live.abort.signal });
    let body;
    try { body = await resp.json(); } catch (e) { throw new ApiError(resp.status, "The server answered " + resp.status); }
    if (body && body.error) {
      if (body.error.code === 401) { location.assign("/auth/sign-in?next=" + encodeURIComponent(location.pathname)); }
      throw new ApiError(body.error.code, body.error.message);
    }
    return body;
  } finally {
    live.abort = null;
  }
}

async function followSessions() {
  let failures = 0;
  for (;;) {
    const hidden = document.hidden;
    let pause;
    try {
      const answer = await fetchLive(!hidden);
      live.version = answer.version;
      applySessions(answer.sessions);
      document.getElementById("live").classList.remove("error");
      failures = 0;
      pause = hidden ? HIDDEN_POLL_MS : (answer.busy ? BUSY_POLL_MS : 0);
    } catch (e) {
      if (e.name === "AbortError") continue; // the tab was hidden: go on at once, as a hidden tab
      failures += 1;
      flash("Live updates paused: " + e.message, true);
      pause = Math.min(RETRY_MAX_MS, 1000 * 2 ** (failures - 1));
    }
    if (pause) await liveSleep(pause);
  }
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden && live.abort) live.abort.abort(); // a hidden tab does not hold one of the browser's connections
  if (!document.hidden && live.wake) live.wake(); // shown again: follow at once
});

const ACTIONS = {
  stop: { ask: "Stop the session '%s'? Unsaved work in it is lost.", ok: "Stop", wait: "stopping…",
          call: (id) => api("stop_session", { session_ids: id }) },
  kill: { ask: "Force quit the session '%s'? Its processes are killed at once; unsaved work is lost.", ok: "Force quit",
          wait: "stopping…", call: (id) => api("stop_session", { session_ids: id, force_quit: true }) },
  suspend: { ask: "Suspend the session '%s'? It stops running and can be resumed later where it left off.",
             ok: "Suspend", wait: "suspending…", call: (id) => api("stop_session", { session_ids: id, suspend_session: true }) },
  resume: { ask: null, wait: "resuming…", call: (id) => api("resume_session", { session_id: id }) },
};

async function sessionAction(button) {
  const id = button.dataset.session;
  const action = ACTIONS[button.dataset.action];
  const session = sessions.find((s) => s.id === id);
  if (!action || !session) return;
  if (action.ask && !(await confirmAction(action.ask.replace("%s", session.name), action.ok))) return;
  pending.set(id, { from: session.activity_state, label: action.wait });
  renderSessions();
  try {
    await action.call(id);
  } catch (e) {
    pending.delete(id);
    renderSessions();
    flash(e.message, true);
  }
}

// -- New Session dialog ---------------------------------------------------------------------------------------
function fieldError(id, text) {
  const node = document.getElementById(id);
  if (!node) return false;
  node.textContent = text || "";
  const input = document.querySelector(`[aria-describedby~="${id}"]`);
  if (input) input.setAttribute("aria-invalid", text ? "true" : "false");
  return true;
}

function clearErrors(form) {
  for (const node of form.querySelectorAll(".field-error")) fieldError(node.id, "");
  const general = form.querySelector(".error");
  general.hidden = true;
  general.textContent = "";
}

function clusterOf(name) {
  return envs.clusters.find((c) => c.name === name);
}

function fillClusters(select, selected) {
  select.replaceChildren(...envs.clusters.map((c) => el("option", { value: c.name, selected: c.name === selected }, c.name)));
}

function fillClusterFields() {
  const cluster = clusterOf(document.getElementById("f-cluster").value);
  const queue = document.getElementById("f-queue");
  const queues = (cluster && cluster.queues) || [];
  queue.replaceChildren(...(queues.length ? queues.map((q) => el("option", { value: q }, q))
                                          : [el("option", { value: "" }, "(no queues)")]));
  queue.disabled = queues.length === 0;
  const box = document.getElementById("f-limits");
  const legend = box.querySelector("legend");
  const fields = ((cluster && cluster.resourceLimits) || []).map((limit) => {
    const id = "f-limit-" + limit.type;
    // A limit the cluster sets for every job (pids) is shown, not asked for: launch_session takes only limit_types.
    const fixed = !envs.limit_types.includes(limit.type);
    const label = (envs.limit_labels[limit.type] || limit.type) + (fixed ? " (set by the cluster)"
      : limit.maxValue ? " (at most " + limit.maxValue + ")" : "");
    return el("div", { class: "field" },
      el("label", { for: id }, label),
      el("input", { id: id, type: "number", min: "0", step: "any", max: limit.maxValue || null, value: limit.defaultValue || "",
                    "data-limit": limit.type, "data-max": limit.maxValue || "", "data-default": limit.defaultValue || "",
                    "aria-describedby": "e-limit-" + limit.type, disabled: fixed,
                    inputmode: "decimal" }),
      el("p", { class: "field-error", id: "e-limit-" + limit.type }));
  });
  box.replaceChildren(legend, ...fields);
  box.hidden = fields.length === 0;
}

function openSessionDialog() {
  const ide = document.getElementById("f-ide");
  ide.replaceChildren(...envs.ides.map((item) => el("option", { value: item.name, disabled: !item.available },
    item.available ? item.name : item.name + " — " + item.why)));
  const first = envs.ides.find((item) => item.available);
  if (first) ide.value = first.name;
  const form = document.getElementById("session-form");
  clearErrors(form);
  fillClusters(document.getElementById("f-cluster"), (first && first.default_cluster) || envs.default_cluster);
  fillClusterFields();
  if (!first) {
    const general = document.getElementById("session-error");
    general.textContent = "No IDE is available on this server: ask its operator to install one.";
    general.hidden = false;
  }
  document.getElementById("session-dialog").showModal();
  document.getElementById("f-name").focus();
}

const CONTROL = /[\u0000-\u001f\u007f]/;

function sessionRequest() {
  const errors = {};
  const workbench = document.getElementById("f-ide").value;
  const ide = envs.ides.find((item) => item.name === workbench);
  if (!ide || !ide.available) errors["e-ide"] = "Choose an IDE that is available on this server.";
  const name = document.getElementById("f-name").value.trim();
  if (name.length > 255) errors["e-name"] = "At most 255 characters.";
  else if (CONTROL.test(name)) errors["e-name"] = "No control characters, please.";
  const limits = [];
  for (const input of document.querySelectorAll("#f-limits input[data-limit]:not([disabled])")) {
    const text = input.value.trim();
    if (!text) continue;
    const value = Number(text);
    const max = input.dataset.max ? Number(input.dataset.max) : null;
    const id = "e-limit-" + input.dataset.limit;
    if (!Number.isFinite(value) || value <= 0) errors[id] = "Enter a number greater than 0.";
    else if (max !== null && value > max) errors[id] = "At most " + input.dataset.max + " on this cluster.";
    else if (text !== input.dataset.default) limits.push({ type: input.dataset.limit, value: text });
    // (a limit left at the cluster's default is not sent: the cluster applies its default anyway)
  }
  const workdir = document.getElementById("f-workdir").value.trim();
  if (CONTROL.test(workdir)) errors["e-workdir"] = "No control characters, please.";
  const queue = document.getElementById("f-queue");
  const launch = { cluster: document.getElementById("f-cluster").value, resource_limits: limits,
                   queues: queue.disabled || !queue.value ? [] : [queue.value] };
  return { errors: errors, kwparams: { workbench: workbench, name: name || null, working_directory: workdir || null,
                                       launch_parameters: launch } };
}

// The server's refusal goes next to the field it is about, as the dialog's own checks do.
function serverErrorField(message, prefix) {
  const text = message.toLowerCase();
  let first = null; // the limit named first: "resource limit memory must be ..., expected one of [...]"
  for (const input of document.querySelectorAll("#f-limits input[data-limit]:not([disabled])")) {
    const at = text.indexOf(input.dataset.limit.toLowerCase());
    if (at >= 0 && (first === null || at < first.at)) first = { at: at, id: "e-limit-" + input.dataset.limit };
  }
  if (first) return first.id;
  const rules = [["queue", "queue"], ["working", "workdir"], ["directory", "workdir"], ["command", "command"],
                 ["name", "name"], ["cluster", "cluster"], ["workbench", "ide"]];
  for (const [word, field] of rules) {
    if (text.includes(word) && document.getElementById(prefix + field)) return prefix + field;
  }
  return null;
}

function showErrors(form, errors) {
  let first = null;
  for (const [id, text] of Object.entries(errors)) {
    fieldError(id, text);
    if (!first) first = document.querySelector(`[aria-describedby~="${id}"]`);
  }
  if (first) first.focus();
}

function showServerError(form, error, prefix) {
  const field = serverErrorField(error.message, prefix);
  if (field) { showErrors(form, { [field]: error.message }); return; }
  const general = form.querySelector(".error");
  general.textContent = error.message;
  general.hidden = false;
}

async function launchSession(event) {
  event.preventDefault();
  const form = event.target;
  clearErrors(form);
  const { errors, kwparams } = sessionRequest();
  if (Object.keys(errors).length) { showErrors(form, errors); return; }
  const button = document.getElementById("session-launch");
  button.disabled = true;
  try {
    const started = await api("launch_session", kwparams);
    document.getElementById("session-dialog").close();
    flash("Launching " + (kwparams.name || kwparams.workbench) + "…");
    // The live feed may have brought the new session already, while this call was answered.
    if (!sessions.some((s) => s.id === started.id)) {
      applySessions(sessions.concat([{ id: started.id, name: kwparams.name || kwparams.workbench + " Session",
        workbench: kwparams.workbench, activity_state: "launching", status_detail: "", url: started.url,
        created: Date.now(), last_used: Date.now(), launch_parameters: kwparams.launch_parameters }]));
    }
  } catch (e) {
    showServerError(form, e, "e-");
  } finally {
    button.disabled = false;
  }
}

// -- New Job dialog --------------------------------------------------------------------------------------------
function openJobDialog() {
  const form = document.getElementById("job-form");
  clearErrors(form);
  fillClusters(document.getElementById("j-cluster"), envs.default_cluster);
  document.getElementById("job-dialog").showModal();
  document.getElementById("j-name").focus();
}

async function launchJob(event) {
  event.preventDefault();
  const form = event.target;
  clearErrors(form);
  const name = document.getElementById("j-name").value.trim();
  const command = document.getElementById("j-command").value.trim();
  const workdir = document.getElementById("j-workdir").value.trim();
  const errors = {};
  if (!name) errors["e-j-name"] = "Give the job a name.";
  else if (name.length > 255 || CONTROL.test(name)) errors["e-j-name"] = "At most 255 characters, no control characters.";
  if (!command) errors["e-j-command"] = "Enter the command to run.";
  if (CONTROL.test(workdir)) errors["e-j-workdir"] = "No control characters, please.";
  if (Object.keys(errors).length) { showErrors(form, errors); return; }
  const job = { name: name, command: command, cluster: document.getElementById("j-cluster").value };
  if (workdir) job.working_directory = workdir;
  try {
    const result = await api("launch_job", { job: job });
    location.assign("/jobs/" + encodeURIComponent(result.job.id));
  } catch (e) {
    showServerError(form, e, "e-j-");
  }
}

function startHome() {
  envs = JSON.parse(document.getElementById("compute-envs").textContent);
  const initial = document.getElementById("initial-sessions");
  live.version = initial.dataset.version || "";
  applySessions(JSON.parse(initial.textContent));
  renderSessions();
  document.getElementById("sessions").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) sessionAction(button);
  });
  for (const id of ["new-session", "new-session-empty"]) {
    const button = document.getElementById(id);
    if (button) button.addEventListener("click", openSessionDialog);
  }
  for (const id of ["new-job", "new-job-empty"]) {
    const button = document.getElementById(id);
    if (button) button.addEventListener("click", openJobDialog);
  }
  document.getElementById("f-cluster").addEventListener("change", fillClusterFields);
  document.getElementById("session-form").addEventListener("submit", launchSession);
  document.getElementById("job-form").addEventListener("submit", launchJob);
  followSessions();
}

// -- a job's page: its output, live -----------------------------------------------------------------------------
async function streamOutput(pre, state) {
  const resp = await callRaw("get_job_output", { job_id: pre.dataset.job, user: pre.dataset.user });
  if ((resp.headers.get("content-type") || "").startsWith("application/json")) {
    const body = await resp.json();
    throw new ApiError(body.error ? body.error.code : resp.status, body.error ? body.error.message : "no output");
  }
  state.textContent = "Following the output live…";
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      if (!line.trim()) continue;
      const item = JSON.parse(line);
      if (item.error) throw new ApiError(item.error.code, item.error.message);
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(el("span", { class: item.outputType }, item.output));
      if (!state.dataset.seen) { // the job has started: show its status once (a store read, not one per line)
        state.dataset.seen = "yes";
        refreshJob(pre.dataset.job, pre.dataset.user).catch(() => {});
      }
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }
  }
}

async function jobOf(id, user) {
  return (await api("get_session", { include_all_jobs: true, user: user })).jobs.find((j) => j.id === id);
}

async function refreshJob(id, user) {
  const asked = (refreshJob.asked = (refreshJob.asked || 0) + 1);
  const job = await jobOf(id, user);
  if (!job || asked !== refreshJob.asked) return; // a later answer is on its way: it wins
  const badge = document.getElementById("job-status");
  badge.textContent = job.status;
  badge.className = "badge status-" + job.status.toLowerCase();
  document.getElementById("job-message").textContent = job.statusMessage;
  document.getElementById("job-exit").textContent = job.exitCode === null ? "" : String(job.exitCode);
  if (FINAL_JOB.includes(job.status)) {
    for (const id of ["job-stop", "job-kill"]) { const b = document.getElementById(id); if (b) b.hidden = true; }
  }
}

async function startJob() {
  const pre = document.getElementById("output");
  const state = document.getElementById("output-state");
  for (const [id, force] of [["job-stop", false], ["job-kill", true]]) {
    const button = document.getElementById(id);
    if (!button) continue;
    button.addEventListener("click", async () => {
      const ask = force ? "Force quit this job? It is killed at once." : "Stop this job?";
      if (!(await confirmAction(ask, force ? "Force quit" : "Stop"))) return;
      try {
        await api("stop_job", { job_id: pre.dataset.job, force_quit: force });
        state.textContent = "Stopping…";
      } catch (e) { state.textContent = e.message; }
    });
  }
  try {
    await streamOutput(pre, state);
    state.textContent = pre.childNodes.length ? "The job has ended; this is all its output." : "The job has ended without output.";
  } catch (e) {
    state.textContent = "The output could not be read: " + e.message;
    state.classList.add("error");
  }
  try { await refreshJob(pre.dataset.job, pre.dataset.user); } catch (e) { /* the status stays as loaded */ }
}

// -- Admin: stop or force quit anyone's session or job ------------------------------------------------------------
// After a stop the page follows the session or job through the API until it has ended (a JupyterLab can take
// many seconds to stop), showing each state on its row, and then loads again to show the whole outcome. It does
// not load while a confirmation is open: that would drop the admin's next action half-way.
const FOLLOW_EVERY_MS = 1000;
const FOLLOW_FOR_MS = 120000;

function reloadUnlessAsking() {
  if (document.querySelector("dialog[open]")) setTimeout(reloadUnlessAsking, 500);
  else location.reload();
}

async function stateOf(button) {
  const owner = button.dataset.owner;
  if (button.dataset.action === "stop-job") {
    const job = await jobOf(button.dataset.job, owner);
    return job ? { state: job.status, ended: FINAL_JOB.includes(job.status) } : { state: null, ended: true };
  }
  const session = (await api("get_session", { session_id: button.dataset.session, user: owner })).sessions[0];
  return session ? { state: session.activity_state, ended: FINAL_STATES.includes(session.activity_state) }
    : { state: null, ended: true };
}

async function followThenReload(button, badge) {
  const until = Date.now() + FOLLOW_FOR_MS;
  while (Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, FOLLOW_EVERY_MS));
    let now;
    try { now = await stateOf(button); } catch (e) { break; } // the loaded page shows what the server has
    if (now.state) badge.textContent = now.state;
    if (now.ended) break;
  }
  reloadUnlessAsking();
}

function startAdmin(table) {
  table.closest("main").addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const name = button.dataset.name;
    const kind = button.dataset.action;
    const ask = kind === "stop-job" ? `Stop the job '${name}'?`
      : `${kind === "kill" ? "Force quit" : "Stop"} ${button.dataset.owner}'s session '${name}'? Unsaved work in it is lost.`;
    if (!(await confirmAction(ask, kind === "kill" ? "Force quit" : "Stop"))) return;
    try {
      if (kind === "stop-job") await api("stop_job", { job_id: button.dataset.job });
      else await api("stop_session", { session_ids: button.dataset.session, force_quit: kind === "kill" });
      const badge = button.closest("tr").querySelector(".badge");
      badge.textContent = "stopping…";
      followThenReload(button, badge);
    } catch (e) {
      alert(e.message);
    }
  });
}

// -- every page ------------------------------------------------------------------------------------------------
function startCommon() {
  refreshTimes();
  setInterval(() => refreshTimes(), 15000);
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", async (event) => {
      if (form.dataset.confirmed === "yes") return;
      event.preventDefault();
      const button = form.querySelector('button[type="submit"]');
      if (await confirmAction(form.dataset.confirm, button ? button.textContent : "Confirm")) {
        form.dataset.confirmed = "yes";
        form.requestSubmit();
      }
    });
  }
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const input = document.getElementById(button.dataset.copy);
      input.select();
      try { await navigator.clipboard.writeText(input.value); button.textContent = "Copied"; } catch (e) { /* selected */ }
    });
  }
  for (const button of document.querySelectorAll("dialog [data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
}

document.addEventListener("DOMContentLoaded", () => {
  startCommon();
  if (document.getElementById("sessions")) startHome();
  if (document.getElementById("output")) startJob();
  const adminTable = document.getElementById("admin-users-table");
  if (adminTable) startAdmin(adminTable);
});
