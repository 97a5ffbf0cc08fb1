// The playground: a form over POST /v1/jobs that follows the job's events step by step.
// No framework and no build step; it talks to the API exactly as any client would.
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = ["#3b6fd8", "#e08a1e", "#7a52c7", "#2a9d6f", "#c2410c", "#64748b"];
const PHASES = [["queue_wait", "waiting in the queue"], ["text_encode", "text encoder"],
  ["steps", "denoising steps"], ["vae_decode", "VAE decode"], ["total", "total"]];
const FIELDS = ["prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "scheduler",
  "precision"];

const state = { model: null, key: "", list: [], lastSeed: null, job: null, retryUntil: 0 };

// --- talking to the server -------------------------------------------------------------

function headers(json) {
  const out = {};
  if (state.key) out.Authorization = `Bearer ${state.key}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

async function call(method, path, body) {
  const res = await fetch(path, {
    method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await res.json(); } catch { /* not JSON: data stays null */ }
  return { res, data };
}

function banner(text) {
  $("banner").textContent = text || "";
  $("banner").hidden = !text;
}

async function connect() {
  let ready;
  try {
    ready = await call("GET", "/health/ready");
  } catch {
    banner("The server does not answer; retrying…");
    return setTimeout(connect, 2000);
  }
  if (ready.res.status !== 200) {
    const why = ready.data && ready.data.error ? ready.data.error.message : "not ready";
    banner(`The model is loading (${why}); the form fills in when it is ready.`);
    return setTimeout(connect, 2000);
  }
  const { res, data } = await call("GET", "/v1/models");
  if (res.status === 401) {
    $("key-field").hidden = false;
    fieldError("api-key", state.key ? data.error.message : "Enter this server's API key.");
    banner("This server needs an API key.");
    $("api-key").focus();
    return;
  }
  if (res.status !== 200) {
    banner(data && data.error ? data.error.message : `GET /v1/models answered ${res.status}`);
    return setTimeout(connect, 2000);
  }
  fieldError("api-key", "");
  banner("");
  useModel(data.data[0]);
}

// --- the form ----------------------------------------------------------------------------

function options(select, names, chosen) {
  select.replaceChildren(...names.map((name) => new Option(name, name, false, name === chosen)));
}

function useModel(model) {
  state.model = model;
  $("model").textContent = `${model.id} · ${model.family} · ${model.precisions.join(", ")}`;
  $("sizes").replaceChildren(...(model.sizes || []).map((size) => new Option(String(size))));
  $("width").value = $("height").value = model.default_size;
  $("steps").value = model.defaults.steps;
  $("guidance_scale").value = model.defaults.guidance_scale;
  options($("scheduler"), model.schedulers, model.default_scheduler);
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
  $("generate").disabled = false;
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

// The precision of every step, as the server will run it.
function schedule() {
  const steps = stepCount();
  if (mode() === "one") return Array(steps).fill($("precision-name").value);
  if (mode() === "list") {
    const list = state.list.slice(0, steps);
    while (list.length < steps) list.push(list[list.length - 1] || state.model.precisions[0]);
    return list;
  }
  const first = parseInt($("split-first").value, 10) || 0;
  const last = parseInt($("split-last").value, 10) || 0;
  return Array.from({ length: steps }, (_, i) =>
    i < first || i >= steps - last ? $("split-high").value : $("split-low").value);
}

function renderStrip() {
  if (!state.model) return;
  const plan = schedule();
  if (mode() === "list") state.list = plan;
  $("strip").replaceChildren(...plan.map((precision, i) => {
    const cell = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.index = i;
    button.dataset.precision = precision;
    button.style.setProperty("--c", colour(precision));
    button.setAttribute("aria-label", `step ${i + 1}: ${precision}`);
    button.title = `step ${i + 1}: ${precision}`;
    cell.append(button);
    return cell;
  }));
}

// A click on a step makes the schedule per-step (from what it was) and moves that step
// to the next precision the model offers.
function cycleStep(index) {
  if (state.job) return;
  if (mode() !== "list") setMode("list");
  const names = state.model.precisions;
  state.list[index] = names[(names.indexOf(state.list[index]) + 1) % names.length];
  renderStrip();
  $("strip").querySelector(`[data-index="${index}"]`).focus();
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

function fieldError(field, message) {
  const slot = $(`${field}-error`);
  slot.textContent = message;
  const input = $(field);
  if (message) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}

function clearErrors() {
  for (const field of FIELDS) fieldError(field, "");
  status("");
}

function status(text) {
  $("status").textContent = text;
}

function showError(res, error) {
  const message = error ? error.message : `the server answered ${res.status}`;
  const field = error && error.param ? error.param.split(".")[0] : null;
  if (res.status === 401) {
    $("key-field").hidden = false;
    fieldError("api-key", message);
    $("api-key").focus();
  } else if (res.status === 429) {
    const wait = parseInt(res.headers.get("Retry-After"), 10) || 1;
    state.retryUntil = Date.now() + wait * 1000;
    countdown(message);
  } else if (res.status === 503) {
    status(message);
    connect();
  } else if (field && FIELDS.includes(field)) {
    fieldError(field, message);
    $(field === "precision" ? "split-first" : field).focus();
  } else {
    status(message);
  }
}

function countdown(message) {
  const left = Math.ceil((state.retryUntil - Date.now()) / 1000);
  $("generate").disabled = left > 0;
  status(left > 0 ? `${message} (retry in ${left} s)` : "");
  if (left > 0) setTimeout(() => countdown(message), 1000);
}

// --- running a job -------------------------------------------------------------------------

async function generate(event) {
  event.preventDefault();
  if (state.job || !state.model) return;
  clearErrors();
  renderStrip();
  const { res, data } = await call("POST", "/v1/jobs", request());
  if (res.status !== 202) return showError(res, data && data.error);
  running(data);
  try {
    await follow(data.id);
  } catch (error) {
    status(`Lost the job's events: ${error.message}`);
  }
  running(null);
}

function running(job) {
  state.job = job;
  $("generate").disabled = Boolean(job);
  $("cancel").disabled = !job;
  $("form").classList.toggle("busy", Boolean(job));
  if (!job) return;
  state.lastSeed = job.seed;
  $("seed-reuse").disabled = false;
  status(`Job ${job.id.slice(0, 8)} ${job.status} · seed ${job.seed}`);
}

async function follow(id) {
  const res = await fetch(`/v1/jobs/${id}/events`, { headers: headers(false) });
  if (!res.ok) throw new Error(`events answered ${res.status}`);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      let [event, data] = ["message", ""];
      for (const line of buffer.slice(0, end).split("\n")) {
        const colon = line.indexOf(":");
        const [key, value] = [line.slice(0, colon), line.slice(colon + 1).trim()];
        if (key === "event") event = value;
        else if (key === "data") data += value;
      }
      buffer = buffer.slice(end + 2);
      if (await onEvent(id, event, JSON.parse(data || "{}"))) return;
    }
  }
}

// Returns true when the job has ended.
async function onEvent(id, event, data) {
  if (event === "step") {
    const cell = $("strip").querySelector(`[data-index="${data.index}"]`);
    if (cell) {
      cell.dataset.state = "done";
      cell.style.setProperty("--c", colour(data.precision));
      cell.textContent = data.seconds.toFixed(2);
      cell.title = `step ${data.index + 1}: ${data.precision}, timestep ${data.timestep}, ${data.seconds.toFixed(3)} s`;
      cell.setAttribute("aria-label", cell.title);
    }
    status(`Step ${data.index + 1} of ${$("strip").children.length} at ${data.precision} · ${data.seconds.toFixed(2)} s`);
    return false;
  }
  if (event === "completed") {
    const { res, data: job } = await call("GET", `/v1/jobs/${id}`);
    if (res.status !== 200) showError(res, job && job.error);
    else show(job);
    return true;
  }
  if (event === "failed") {
    status(data.error ? data.error.message : "the job failed");
    return true;
  }
  return false;
}

function show(job) {
  const url = `data:image/png;base64,${job.images[0]}`;
  $("image").src = url;
  $("image").alt = `${$("prompt").value} (seed ${job.seed})`;
  $("image").hidden = false;
  $("caption").textContent = `seed ${job.seed} · ${job.width}×${job.height} · ${job.steps_total} steps · ` +
    `${job.scheduler} · guidance ${job.guidance_scale}`;
  $("download").href = url;
  $("download").download = `mixdiff-${job.seed}.png`;
  $("download").hidden = false;
  const rows = PHASES.filter(([key]) => key in job.timings)
    .map(([key, name]) => [name, job.timings[key]]);
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
  for (const warning of job.warnings) status(warning);
  if (!job.warnings.length) status(`Done in ${job.timings.total.toFixed(2)} s.`);
}

// --- wiring ----------------------------------------------------------------------------------

function wire() {
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", () => state.job && call("POST", `/v1/jobs/${state.job.id}/cancel`));
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => setMode(radio.value));
  }
  for (const id of ["steps", "precision-name", "split-high", "split-low", "split-first", "split-last"]) {
    $(id).addEventListener("input", renderStrip);
  }
  $("strip").addEventListener("click", (event) => {
    const cell = event.target.closest("button");
    if (cell) cycleStep(Number(cell.dataset.index));
  });
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
  $("generate").disabled = true;
  connect();
}

wire();
