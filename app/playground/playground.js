// The playground: a form over POST /v1/jobs that follows the job's events step by step.
// No framework and no build step; it talks to the API exactly as any client would.
"use strict";

const $ = (id) => document.getElementById(id);
// Dark enough for white text (contrast 4.5:1 or more) on a finished step.
const PALETTE = ["#2f5fc4", "#b45309", "#6d28d9", "#047857", "#b91c1c", "#475569"];
const PHASES = [["queue_wait", "waiting in the queue"], ["text_encode", "text encoder"],
  ["steps", "denoising steps"], ["vae_decode", "VAE decode"], ["total", "total"]];
const FIELDS = ["prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "scheduler",
  "decoder", "precision"];

const state = { model: null, key: "", list: [], lastSeed: null, job: null, busy: false, focus: 0, retryUntil: 0 };

// --- talking to the server -------------------------------------------------------------

function headers(json) {
  const out = {};
  if (state.key) out.Authorization = `Bearer ${state.key}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

// { res, data } of a JSON call; a network failure throws.
async function call(method, path, body) {
  const res = await fetch(path, {
    method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await res.json(); } catch { /* not JSON: data stays null */ }
  return { res, data };
}

function message(res, data) {
  return data && data.error ? data.error.message : `the server answered ${res.status}`;
}

function banner(text) {
  $("banner").textContent = text || "";
  $("banner").hidden = !text;
}

// Wait for a ready server, then read its model (asking for the API key if it has one).
async function connect() {
  try {
    const ready = await call("GET", "/health/ready");
    if (ready.res.status !== 200) {
      banner(`The model is loading (${message(ready.res, ready.data)}); the form fills in when it is ready.`);
      return setTimeout(connect, 2000);
    }
    const { res, data } = await call("GET", "/v1/models");
    if (res.status === 401) {
      askForKey(state.key ? message(res, data) : "Enter this server's API key.");
      banner("This server needs an API key.");
      return;
    }
    if (res.status !== 200) {
      banner(message(res, data));
      return setTimeout(connect, 2000);
    }
    fieldError("api-key", "");
    banner("");
    if (!state.model) useModel(data.data[0]);
    state.model = data.data[0];
    idle();
  } catch {
    banner("The server does not answer; retrying…");
    setTimeout(connect, 2000);
  }
}

function askForKey(text) {
  $("key-field").hidden = false;
  fieldError("api-key", text);
  $("api-key").focus();
}

// --- the form ----------------------------------------------------------------------------

function options(select, names, chosen) {
  select.replaceChildren(...names.map((name) => new Option(name, name, false, name === chosen)));
}

// Fill the form with the model's defaults (once: a reconnect keeps what the user typed).
function useModel(model) {
  state.model = model;
  $("model").textContent = `${model.id} · ${model.family} · ${model.precisions.join(", ")}`;
  $("sizes").replaceChildren(...(model.sizes || []).map((size) => new Option(String(size))));
  $("width").value = $("height").value = model.default_size;
  $("steps").value = model.defaults.steps;
  $("guidance_scale").value = model.defaults.guidance_scale;
  options($("scheduler"), model.schedulers, model.default_scheduler);
  options($("decoder"), model.decoders, model.defaults.decoder);
  const spec = model.default_precision;
  const [high, low] = [model.precisions[0], model.precisions[model.precisions.length - 1]];
  options($("precision-name"), model.precisions, typeof spec === "string" ? spec : high);
  options($("split-high"), model.precisions, spec.high || high);
  options($("split-low"), model.precisions, spec.low || low);
  $("split-first").value = spec.first ?? 1;
  $("split-last").value = spec.last ?? 1;
  $("legend").replaceChildren(...model.precisions.map((name) => {
    const item = document.createElement("span");
    item.style.setProperty("--c", colour(name));
    item.textContent = name;
    return item;
  }));
  if (Array.isArray(spec)) {
    state.list = [...spec];
    $("steps").value = spec.length;
  }
  setMode(Array.isArray(spec) ? "list" : typeof spec === "string" ? "one" : "split");
}

function colour(precision) {
  const index = state.model.precisions.indexOf(precision);
  return PALETTE[(index < 0 ? PALETTE.length - 1 : index) % PALETTE.length];
}

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function setMode(value) {
  if (value === "list" && mode() !== "list") state.list = schedule();
  document.querySelector(`input[name=mode][value=${value}]`).checked = true;
  for (const part of document.querySelectorAll("[data-mode]")) part.hidden = part.dataset.mode !== value;
  renderStrip();
}

function stepCount() {
  const steps = parseInt($("steps").value, 10);
  return Number.isFinite(steps) && steps > 0 ? Math.min(steps, 1000) : 0;
}

// The precision of every step, as the server will run it. In per-step mode the list
// keeps the user's choices beyond the step count, should it grow again.
function schedule() {
  const steps = stepCount();
  if (mode() === "one") return Array(steps).fill($("precision-name").value);
  if (mode() === "list") {
    while (state.list.length < steps) state.list.push(state.list[state.list.length - 1] || state.model.precisions[0]);
    return state.list.slice(0, steps);
  }
  const first = parseInt($("split-first").value, 10) || 0;
  const last = parseInt($("split-last").value, 10) || 0;
  return Array.from({ length: steps }, (_, i) =>
    i < first || i >= steps - last ? $("split-high").value : $("split-low").value);
}

// One cell per step, showing its precision; one tab stop, arrows move between steps.
function renderStrip(plan = schedule()) {
  if (!state.model) return;
  state.focus = Math.min(state.focus, Math.max(0, plan.length - 1));
  $("strip").replaceChildren(...plan.map((precision, i) => {
    const cell = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.index = i;
    button.tabIndex = i === state.focus ? 0 : -1;
    button.style.setProperty("--c", colour(precision));
    button.textContent = precision;
    button.title = `step ${i + 1}: ${precision}`;
    button.setAttribute("aria-label", button.title);
    cell.append(button);
    return cell;
  }));
}

function cell(index) {
  return $("strip").querySelector(`[data-index="${index}"]`);
}

// Enter or a click on a step makes the schedule per-step (from what it was) and moves
// that step to the next precision the model offers.
function cycleStep(index) {
  if (state.job) return;
  if (mode() !== "list") {
    setMode("list");
    status("The schedule is now per step.");
  }
  const names = state.model.precisions;
  state.list[index] = names[(names.indexOf(state.list[index]) + 1) % names.length];
  state.focus = index;
  renderStrip();
  cell(index).focus();
}

function moveFocus(event) {
  const keys = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1, Home: -Infinity, End: Infinity };
  if (!(event.key in keys)) return;
  event.preventDefault();
  const count = $("strip").children.length;
  const to = Math.max(0, Math.min(count - 1, state.focus + keys[event.key]));
  cell(state.focus).tabIndex = -1;
  state.focus = to;
  cell(to).tabIndex = 0;
  cell(to).focus();
}

function number(id) {
  const text = $(id).value.trim();
  return text === "" ? undefined : Number(text);
}

function request() {
  const body = { prompt: $("prompt").value };
  if ($("negative_prompt").value.trim()) body.negative_prompt = $("negative_prompt").value;
  for (const id of ["width", "height", "guidance_scale"]) body[id] = number(id);
  body.scheduler = $("scheduler").value;
  body.decoder = $("decoder").value;
  if (!$("seed-random").checked) body.seed = number("seed");
  if (mode() === "list") {
    body.precision = schedule();
  } else {
    body.steps = number("steps");
    body.precision = mode() === "one" ? $("precision-name").value : {
      high: $("split-high").value, low: $("split-low").value,
      first: number("split-first"), last: number("split-last"),
    };
  }
  return body;
}

// --- errors beside their fields ------------------------------------------------------------

// The control a field's error belongs to: the precision schedule's is the visible one.
function control(field) {
  if (field !== "precision") return $(field);
  return { one: $("precision-name"), split: $("split-first"), list: cell(0) || $("steps") }[mode()];
}

function fieldError(field, text) {
  $(`${field}-error`).textContent = text;
  const input = field === "api-key" ? $("api-key") : control(field);
  for (const element of document.querySelectorAll("[aria-invalid]")) {
    if (element.dataset.field === field) element.removeAttribute("aria-invalid");
  }
  if (text && input) {
    input.setAttribute("aria-invalid", "true");
    input.dataset.field = field;
  }
}

function clearErrors() {
  for (const field of FIELDS) fieldError(field, "");
  status("");
}

function status(text) {
  $("status").textContent = text;
}

function showError(res, data) {
  const text = message(res, data);
  const field = data && data.error && data.error.param ? data.error.param.split(".")[0] : null;
  if (res.status === 401) {
    askForKey(text);
  } else if (res.status === 429) {
    const wait = parseInt(res.headers.get("Retry-After"), 10) || 1;
    countdown(text, Date.now() + wait * 1000);
  } else if (res.status === 503) {
    status(text);
    connect();
  } else if (FIELDS.includes(field)) {
    fieldError(field, text);
    control(field).focus();
  } else {
    status(text);
  }
}

function countdown(text, until) {
  state.retryUntil = until;
  const left = Math.ceil((until - Date.now()) / 1000);
  idle();
  status(left > 0 ? `${text} (retry in ${left} s)` : "");
  if (left > 0) setTimeout(() => countdown(text, until), 1000);
}

// --- running a job -------------------------------------------------------------------------

async function generate(event) {
  event.preventDefault();
  if (state.busy || !state.model) return;
  clearErrors();
  if (mode() === "list" && stepCount() === 0) {
    fieldError("steps", "steps must be at least 1");
    return $("steps").focus();
  }
  busy(true);
  try {
    const { res, data } = await call("POST", "/v1/jobs", request());
    if (res.status !== 202) {
      showError(res, data);
    } else {
      await run(data);
    }
  } catch (error) {
    status(`The server does not answer: ${error.message}`);
  }
  busy(false);
}

// While busy, the form is read-only: the strip and the request stay as they were sent.
function busy(on) {
  state.busy = on;
  for (const element of $("form").elements) {
    if (element.id !== "cancel") element.disabled = on || (element.id === "seed" && $("seed-random").checked);
  }
  $("form").classList.toggle("busy", on);
  if (!on) idle();
}

function idle() {
  $("generate").disabled = !state.model || state.busy || Date.now() < state.retryUntil;
  $("seed-reuse").disabled = state.lastSeed === null || state.busy;
}

async function run(job) {
  state.job = job;
  state.lastSeed = job.seed;
  state.prompt = $("prompt").value;
  renderStrip(job.schedule);
  $("progress").max = job.schedule.length;
  $("progress").value = 0;
  $("progress").hidden = false;
  $("cancel").disabled = false;
  $("cancel").focus();
  status(`Job ${job.id.slice(0, 8)} ${job.status}, seed ${job.seed}: ${job.schedule.length} steps.`);
  try {
    await follow(job.id);
  } finally {
    state.job = null;
    $("cancel").disabled = true;
    $("progress").hidden = true;
    $("step-now").textContent = "";
    $("generate").focus();
  }
}

// Follow the job's server-sent events until it ends; a stream that breaks off is
// picked up again where it stopped (Last-Event-ID), and a job found ended is shown.
async function follow(id) {
  let last = null;
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const res = await fetch(`/v1/jobs/${id}/events`, {
      headers: { ...headers(false), ...(last === null ? {} : { "Last-Event-ID": last }) },
    });
    if (!res.ok) {
      let data = null;
      try { data = await res.json(); } catch { /* not JSON */ }
      return showError(res, data);
    }
    const ended = await read(res.body, id, (eventId) => { last = eventId; });
    if (ended) return;
  }
  const { res, data } = await call("GET", `/v1/jobs/${id}`);
  if (res.status !== 200) return showError(res, data);
  if (data.status === "completed") return show(data);
  status(data.error ? data.error.message : `The job is ${data.status}; its events stopped arriving.`);
}

// Parse an event stream (any line ending); true once the job has ended.
async function read(body, id, seen) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += value || "";
    if (!done && buffer.endsWith("\r")) continue; // its "\n" may be in the next chunk
    buffer = buffer.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0 || (done && buffer.trim() && (end = buffer.length))) {
      const fields = { event: "message", data: [], id: null };
      for (const line of buffer.slice(0, end).split("\n")) {
        const colon = line.indexOf(":");
        const key = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (key === "data") fields.data.push(text);
        else if (key === "event" || key === "id") fields[key] = text;
      }
      buffer = buffer.slice(end + 2);
      if (fields.id !== null) seen(fields.id);
      if (fields.data.length && await onEvent(id, fields.event, JSON.parse(fields.data.join("\n")))) return true;
    }
    if (done) return false;
  }
}

// Returns true when the job has ended.
async function onEvent(id, event, data) {
  if (event === "step") {
    const done = cell(data.index);
    if (done) {
      done.dataset.state = "done";
      done.style.setProperty("--c", colour(data.precision));
      done.textContent = data.seconds.toFixed(2);
      done.title = `step ${data.index + 1}: ${data.precision}, timestep ${data.timestep}, ${data.seconds.toFixed(3)} s`;
      done.setAttribute("aria-label", done.title);
    }
    $("progress").value = data.index + 1;
    $("step-now").textContent = `step ${data.index + 1} of ${$("progress").max} at ${data.precision}`;
    return false;
  }
  if (event === "completed") {
    const { res, data: job } = await call("GET", `/v1/jobs/${id}`);
    if (res.status !== 200) showError(res, job);
    else show(job);
    return true;
  }
  if (event === "failed") {
    status(data.error ? data.error.message : "The job failed.");
    return true;
  }
  return false;
}

function show(job) {
  const url = `data:image/png;base64,${job.images[0]}`;
  $("image").src = url;
  $("image").alt = `${state.prompt} (seed ${job.seed})`;
  $("image").hidden = false;
  $("caption").textContent = `seed ${job.seed} · ${job.width}×${job.height} · ${job.steps_total} steps · ` +
    `${job.scheduler} · guidance ${job.guidance_scale} · ${job.decoder} decoder`;
  $("download").href = url;
  $("download").download = `mixdiff-${job.seed}.png`;
  $("download").hidden = false;
  const rows = PHASES.filter(([key]) => job.timings[key] !== null).map(([key, name]) => [name, job.timings[key]]);
  const byPrecision = {};
  for (const step of job.steps) {
    const sum = byPrecision[step.precision] || (byPrecision[step.precision] = { count: 0, seconds: 0 });
    sum.count += 1;
    sum.seconds += step.seconds;
  }
  const after = rows.findIndex(([name]) => name === "denoising steps") + 1;
  rows.splice(after, 0, ...Object.entries(byPrecision).map(([precision, sum]) =>
    [`· ${sum.count} at ${precision}, ${(sum.seconds / sum.count).toFixed(3)} s each`, sum.seconds]));
  $("timings").tBodies[0].replaceChildren(...rows.map(([name, seconds]) => {
    const row = document.createElement("tr");
    row.append(Object.assign(document.createElement("th"), { scope: "row", textContent: name }),
      Object.assign(document.createElement("td"), { textContent: seconds.toFixed(3) }));
    return row;
  }));
  $("timings").hidden = false;
  status([`Done in ${job.timings.total.toFixed(2)} s.`, ...job.warnings].join(" "));
}

async function cancel() {
  if (!state.job) return;
  try {
    const { res, data } = await call("POST", `/v1/jobs/${state.job.id}/cancel`);
    if (res.status !== 200) showError(res, data);
  } catch (error) {
    status(`The server does not answer: ${error.message}`);
  }
}

// --- wiring ----------------------------------------------------------------------------------

function wire() {
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => setMode(radio.value));
  }
  for (const id of ["steps", "precision-name", "split-high", "split-low", "split-first", "split-last"]) {
    $(id).addEventListener("input", () => renderStrip());
  }
  $("strip").addEventListener("click", (event) => {
    const step = event.target.closest("button");
    if (step) cycleStep(Number(step.dataset.index));
  });
  $("strip").addEventListener("keydown", moveFocus);
  $("seed-random").addEventListener("change", () => { $("seed").disabled = $("seed-random").checked; });
  $("seed-reuse").addEventListener("click", () => {
    $("seed-random").checked = false;
    $("seed").disabled = false;
    $("seed").value = state.lastSeed;
  });
  $("api-key").addEventListener("change", () => {
    state.key = $("api-key").value.trim();
    connect();
  });
  for (const field of FIELDS) {
    const input = field === "precision" ? $("precision") : $(field);
    input.addEventListener("input", () => fieldError(field, ""));
  }
  idle();
  connect();
}

wire();
