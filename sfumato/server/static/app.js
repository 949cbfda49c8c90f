// sfumato web UI: a thin client of the public HTTP APIs (native jobs, A1111 helpers). No generation logic here.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { lastSeed: null, currentJob: null, maskHistory: [], initLoaded: false, loras: [] };

// ------------------------------------------------------------------ settings and HTTP

function settings() {
  return JSON.parse(localStorage.getItem("sfumato.settings") || "{}");
}

function applyTheme() {
  const theme = settings().theme || "system";
  if (theme === "system") document.documentElement.removeAttribute("data-theme");
  else document.documentElement.dataset.theme = theme;
}

function headers(json = true) {
  const h = {};
  const key = settings().apiKey;
  if (key) h["Authorization"] = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

function show(text, ok = false) {
  const box = $("message");
  box.textContent = text;
  box.className = ok ? "ok" : "";
  box.hidden = !text;
}

async function explain(response) {
  let detail = "";
  try { const body = await response.json(); detail = (body.error && body.error.message) || body.detail || ""; } catch (e) { /* not JSON */ }
  if (response.status === 401) return "The server needs an API key: set it in Settings. (" + detail + ")";
  if (response.status === 422) return "Invalid request: " + detail;
  if (response.status === 429) return "The queue is full; retry in " + (response.headers.get("Retry-After") || "a few") + " s.";
  return detail || ("HTTP " + response.status);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(options.body !== undefined), ...(options.headers || {}) } });
  if (!response.ok) throw new Error(await explain(response));
  return response.status === 204 ? null : response.json();
}

async function imageURL(path) {  // fetch with the API key, so <img> works when auth is on
  const response = await fetch(path, { headers: headers(false) });
  if (!response.ok) throw new Error(await explain(response));
  return URL.createObjectURL(await response.blob());
}

// ------------------------------------------------------------------ tabs

function selectTab(name) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.id === "tab-" + name;
    tab.setAttribute("aria-selected", on);
    tab.tabIndex = on ? 0 : -1;
    $(tab.getAttribute("aria-controls")).hidden = !on;
  }
  if (name === "gallery") loadGallery();
  if (name === "queue") loadQueue();
}

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab.id.slice(4)));
    tab.addEventListener("keydown", (e) => {
      const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
      if (!step) return;
      const next = tabs[(i + step + tabs.length) % tabs.length];
      next.focus();
      selectTab(next.id.slice(4));
    });
  });
}

// ------------------------------------------------------------------ prompt syntax

const FLAG_RE = /--(ar|aspect|no|seed|tile|chaos|c|stylize|s|quality|q)\b/g;

function escapeHTML(text) {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

function highlight(text) {
  let html = escapeHTML(text);
  html = html.replace(/&lt;lora:[^&]*&gt;/g, (m) => `<span class="lora">${m}</span>`);
  html = html.replace(/\(([^()]*)\)/g, (m) => `<span class="em">${m}</span>`);
  // [from:to:when] / [to:when] prompt editing and [a|b] alternation, else [de-emphasis]
  html = html.replace(/\[([^\[\]]*)\]/g, (m, inner) =>
    /\|/.test(inner) || /:\s*[+-]?[\d.]+\s*$/.test(inner) ? `<span class="sched">${m}</span>` : `<span class="de">${m}</span>`);
  html = html.replace(/\{[^{}]*\|[^{}]*\}|__[\w\-\/. ]+?__/g, (m) => `<span class="dyn">${m}</span>`);
  html = html.replace(/\bBREAK\b/g, '<span class="brk">BREAK</span>');
  html = html.replace(/\bAND\b/g, '<span class="and">AND</span>');
  html = html.replace(FLAG_RE, (m) => `<span class="flag">${m}</span>`);
  return html;
}

function approximateTokens(text) {  // CLIP BPE is about one token per word piece or punctuation mark
  const plain = text.replace(/--\w+[^-]*/g, "").replace(/<lora:[^>]*>/g, "").replace(/:\s*[\d.]+\)/g, ")");
  return (plain.toLowerCase().match(/[a-z]+|\d|[^\sa-z\d()\[\]]/g) || []).length;
}

function showTokens(chunks, length, exact, scheduled = 1) {
  const last = chunks[chunks.length - 1] || 0;
  const label = chunks.length > 1 ? `chunk ${chunks.length}: ` : "";
  // AND parts and prompt editing encode several texts: show the longest and how many there are
  const many = scheduled > 1 ? ` (longest of ${scheduled} scheduled prompts)` : "";
  $("prompt-tokens").textContent = `${label}${exact ? "" : "≈"}${last}/${length} tokens${many}`;
}

let tokenTimer = null;
function updatePromptInfo() {
  const text = $("prompt").value;
  const chunks = text.split(/\bBREAK\b/).map(approximateTokens);
  showTokens(chunks, 75, false);  // instant estimate, replaced by the model tokenizer's count
  clearTimeout(tokenTimer);
  tokenTimer = setTimeout(async () => {
    try {
      const counts = await api("/api/v1/tokens", { method: "POST", body: JSON.stringify({ prompt: text, model: $("model").value || null }) });
      if ($("prompt").value === text) showTokens(counts.chunks, counts.chunk_length, true, (counts.scheduled || []).length);
    } catch (error) { /* keep the estimate (e.g. an unknown flag while typing) */ }
  }, 250);
  const flags = [...text.matchAll(FLAG_RE)].map((m) => m[0]);
  $("prompt-flags").textContent = flags.length ? "flags: " + flags.join(" ") : "";
  $("prompt-highlight").innerHTML = highlight(text);
}

// ------------------------------------------------------------------ form <-> request

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

function buildRequest() {
  const request = {
    prompt: $("prompt").value, negative_prompt: $("negative_prompt").value, model: $("model").value || null,
    sampler: $("sampler").value || null, preset: $("preset").value || null, steps: number("steps"),
    cfg_scale: number("cfg_scale"),
    seed: number("seed") ?? -1, width: number("width"), height: number("height"),
    batch_size: number("batch_size") || 1, batch_count: number("batch_count") || 1,
    hires_scale: number("hires_scale") || 1, hires_strength: number("hires_strength") ?? 0.55, tile: $("tile").checked,
    hires_upscaler: $("hires_upscaler").value || "latent", vae: $("vae").value || null,
    cache_interval: Number($("cache_interval").value) || 1,
    token_merging_ratio: Number($("token_merging_ratio").value) || 0,
  };
  if ($("fast").checked) {  // the embedded model's few-step setting (sfumato.models.embedded.FAST_SETTINGS)
    request.preset = "lcm";
    if (request.steps === null) request.steps = 2;
  }
  const styles = [...$("styles").selectedOptions].map((o) => o.value);
  if (styles.length) request.styles = styles;
  const loras = state.loras.filter((l) => $("lora-on-" + l).checked).map((l) => [l, Number($("lora-w-" + l).value)]);
  if (loras.length) request.loras = loras;
  if ($("use-control").checked) {
    request.controls = [{ image: $("control-canvas").toDataURL("image/png"), module: $("control-module").value,
                          model: $("control-model").value || null, weight: number("control-weight") ?? 1,
                          guidance_start: number("control-start") ?? 0, guidance_end: number("control-end") ?? 1,
                          control_mode: $("control-mode").value }];
  }
  if ($("use-init").checked && state.initLoaded) {
    request.init_image = $("init-canvas").toDataURL("image/png");
    request.strength = number("strength") ?? 0.75;
    if (state.maskHistory.length) request.mask = maskDataURL();
    const pads = {};
    for (const side of ["left", "right", "up", "down"]) if (number("pad-" + side)) pads[side] = number("pad-" + side);
    if (Object.keys(pads).length) request.outpaint = pads;
  }
  return request;
}

function fillForm(request) {
  const set = (id, value) => { if (value !== undefined && value !== null) $(id).value = value; };
  set("prompt", request.prompt); set("negative_prompt", request.negative_prompt); set("steps", request.steps);
  set("cfg_scale", request.cfg_scale); set("seed", request.seed); set("width", request.width); set("height", request.height);
  // a resolved request already carries its styles in the prompt: select none, or they would apply twice
  const styles = request.template == null ? (request.styles || []) : [];
  for (const option of $("styles").options) option.selected = styles.includes(option.value);
  if (request.vae) {  // a name, or the server's path of a named VAE
    const name = request.vae.split(/[\\/]/).pop();
    if ([...$("vae").options].some((o) => o.value === name)) $("vae").value = name;
  }
  if (request.sampler) {
    if (![...$("sampler").options].some((o) => o.value === request.sampler)) $("sampler").add(new Option(request.sampler, request.sampler));
    $("sampler").value = request.sampler;
  }
  updatePromptInfo();
}

// ------------------------------------------------------------------ generate, progress, cancel

async function readEvents(jobId, onEvent) {  // SSE over fetch (EventSource cannot send the API key)
  const response = await fetch(`/api/v1/jobs/${jobId}/events`, { headers: headers(false) });
  if (!response.ok) throw new Error(await explain(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const name = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (name && data) onEvent(name, JSON.parse(data));
    }
  }
}

async function addThumb(container, job, imageInfo, index) {
  const card = document.createElement("figure");
  card.className = "thumb";
  const img = document.createElement("img");
  img.alt = `${job.request.prompt} (seed ${job.result.seeds[index]})`;
  img.src = await imageURL(imageInfo.url);
  card.append(img);
  if (job.result.nsfw && job.result.nsfw[index]) {
    const flag = document.createElement("span");
    flag.className = "flag-nsfw";
    flag.textContent = "blurred by the safety check";
    card.append(flag);
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  const button = (label, handler) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", handler);
    actions.append(b);
  };
  button("Reuse", () => { fillForm({ ...job.request, seed: job.result.seeds[index] }); show("Parameters loaded into the form.", true); });
  button("Send to edit", async () => { await loadInit(img.src); selectTab("edit"); });
  button("Info", () => { $("details").textContent = job.result.infotexts[index]; selectTab("gallery"); });
  const link = document.createElement("a");
  link.href = img.src;
  link.download = `${imageInfo.id}.png`;
  link.textContent = "Download";
  actions.append(link);
  card.append(actions);
  container.append(card);
}

async function generate(event) {
  event.preventDefault();
  show("");
  const request = buildRequest();
  if (!request.prompt.trim() && !request.init_image) { show("Write a prompt first."); $("prompt").focus(); return; }
  if (!request.negative_prompt && settings().defaultNegative) request.negative_prompt = settings().defaultNegative;
  selectTab("result");
  $("generate").disabled = true;
  try {
    const job = await api("/api/v1/jobs", { method: "POST", body: JSON.stringify(request) });
    state.currentJob = job.id;
    $("cancel").disabled = false;
    $("progress-text").textContent = "queued";
    await readEvents(job.id, async (name, data) => {
      if (name === "queued") $("progress-text").textContent = `queued (position ${data.position + 1})`;
      if (name === "progress") {
        $("progress").value = data.total ? data.step / data.total : 0;
        $("progress-text").textContent = `step ${data.step}/${data.total}`;
        if (data.preview) { $("preview").src = "data:image/png;base64," + data.preview; $("preview").hidden = false; }
      }
      if (name === "completed") {
        $("progress").value = 1;
        $("progress-text").textContent = `done in ${data.result.seconds.toFixed(1)} s`;
        $("preview").hidden = true;
        state.lastSeed = data.result.seeds[0];
        $("results").replaceChildren();
        for (let i = 0; i < data.images.length; i++) await addThumb($("results"), data, data.images[i], i);
      }
      if (name === "failed") { show("Generation failed: " + data.error); $("progress-text").textContent = "failed"; }
      if (name === "cancelled") { $("progress-text").textContent = "cancelled"; $("preview").hidden = true; }
    });
  } catch (error) {
    show(error.message);
    $("progress-text").textContent = "idle";
  } finally {
    $("generate").disabled = false;
    $("cancel").disabled = true;
    state.currentJob = null;
  }
}

async function cancelJob(id) {
  try { await api(`/api/v1/jobs/${id}`, { method: "DELETE" }); } catch (error) { show(error.message); }
}

// ------------------------------------------------------------------ edit: init image and mask

async function loadInit(src) {
  const img = new Image();
  img.src = src;
  await img.decode();
  for (const id of ["init-canvas", "mask-canvas"]) { $(id).width = img.naturalWidth; $(id).height = img.naturalHeight; }
  $("init-canvas").getContext("2d").drawImage(img, 0, 0);
  state.maskHistory = [];
  state.initLoaded = true;
  $("use-init").checked = true;
  $("width").value = img.naturalWidth;
  $("height").value = img.naturalHeight;
}

function maskDataURL() {  // white = repaint, on black
  const mask = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = mask.width; out.height = mask.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, out.width, out.height);
  const data = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height);
  const pixels = ctx.getImageData(0, 0, out.width, out.height);
  for (let i = 3; i < data.data.length; i += 4) if (data.data[i] > 0) pixels.data.fill(255, i - 3, i);
  ctx.putImageData(pixels, 0, 0);
  return out.toDataURL("image/png");
}

function canvasPoint(canvas, e) {  // pointer position in the canvas's own pixels
  const rect = canvas.getBoundingClientRect();
  return [(e.clientX - rect.left) * canvas.width / rect.width, (e.clientY - rect.top) * canvas.height / rect.height];
}

function setupMask() {
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d");
  let drawing = false;
  const point = (e) => canvasPoint(canvas, e);
  const paint = (e) => {
    const [x, y] = point(e);
    const r = Number($("brush").value) * canvas.width / 256 / 2;
    ctx.globalCompositeOperation = $("eraser").checked ? "destination-out" : "source-over";
    ctx.fillStyle = "#ffffff";
    ctx.beginPath(); ctx.arc(x, y, Math.max(0.5, r), 0, Math.PI * 2); ctx.fill();
  };
  canvas.addEventListener("pointerdown", (e) => {
    state.maskHistory.push(ctx.getImageData(0, 0, canvas.width, canvas.height));
    drawing = true; canvas.setPointerCapture(e.pointerId); paint(e);
  });
  canvas.addEventListener("pointermove", (e) => { if (drawing) paint(e); });
  canvas.addEventListener("pointerup", () => { drawing = false; });
  $("mask-undo").addEventListener("click", () => { const last = state.maskHistory.pop(); if (last) ctx.putImageData(last, 0, 0); });
  $("mask-clear").addEventListener("click", () => { state.maskHistory = []; ctx.clearRect(0, 0, canvas.width, canvas.height); });
}

// ------------------------------------------------------------------ control (ControlNet unit)

function clearControl() {
  const ctx = $("control-canvas").getContext("2d");
  ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, 256, 256);
}

function setupControl() {
  const canvas = $("control-canvas");
  const ctx = canvas.getContext("2d");
  clearControl();
  let last = null;
  const point = (e) => canvasPoint(canvas, e);
  const stroke = (e) => {
    const [x, y] = point(e);
    ctx.strokeStyle = "#000000"; ctx.lineCap = "round"; ctx.lineWidth = Number($("control-pen").value);
    ctx.beginPath(); ctx.moveTo(...(last || [x, y])); ctx.lineTo(x, y); ctx.stroke();
    last = [x, y];
  };
  canvas.addEventListener("pointerdown", (e) => { canvas.setPointerCapture(e.pointerId); last = null; stroke(e); $("use-control").checked = true; });
  canvas.addEventListener("pointermove", (e) => { if (last) stroke(e); });
  canvas.addEventListener("pointerup", () => { last = null; });
  $("control-clear").addEventListener("click", () => { clearControl(); $("control-map").hidden = true; });
  $("control-file").addEventListener("change", async () => {
    const file = $("control-file").files[0];
    if (!file) return;
    const img = new Image();
    img.src = await readFile(file);
    await img.decode();
    clearControl();
    ctx.drawImage(img, 0, 0, 256, 256);
    $("use-control").checked = true;
  });
  $("control-preview").addEventListener("click", async () => {
    try {
      const body = { controlnet_module: $("control-module").value, controlnet_processor_res: number("width") || 256,
                     controlnet_input_images: [canvas.toDataURL("image/png")] };
      const result = await api("/controlnet/detect", { method: "POST", body: JSON.stringify(body) });
      $("control-map").src = "data:image/png;base64," + result.images[0];
      $("control-map").hidden = false;
    } catch (error) { show(error.message); }
  });
}

async function loadControlLists() {
  const [modules, models] = await Promise.all([api("/controlnet/module_list"), api("/controlnet/model_list")]);
  const chosen = $("control-module").value;
  $("control-module").replaceChildren(...modules.module_list.map((m) => new Option(m, m)));
  $("control-module").value = modules.module_list.includes(chosen) ? chosen : "scribble";
  $("control-model").replaceChildren(new Option("default (shipped)", ""), ...models.model_list.map((m) => new Option(m, m)));
}

// ------------------------------------------------------------------ extras: upscale, colorize, restore, style

async function loadUpscalers() {
  const upscalers = await api("/api/v1/upscalers");
  const names = upscalers.map((u) => u.name);
  const keep = $("extras-upscaler").value;
  $("extras-upscaler").replaceChildren(...names.map((n) => new Option(n, n)));
  $("extras-upscaler").value = names.includes(keep) ? keep : (names.includes("R-ESRGAN 4x+") ? "R-ESRGAN 4x+" : "Lanczos");
  const hires = $("hires_upscaler").value;
  $("hires_upscaler").replaceChildren(new Option("Latent", "latent"), new Option("Latent (nearest)", "latent-nearest"),
                                      ...names.map((n) => new Option(n, n)));
  $("hires_upscaler").value = hires || "latent";
}

function setCompare(percent) {
  $("extras-after-clip").style.clipPath = `inset(0 0 0 ${percent}%)`;
}

async function waitForJob(id) {
  for (;;) {
    const job = await api(`/api/v1/jobs/${id}`);
    if (job.status === "completed") return job;
    if (job.status === "failed" || job.status === "cancelled") throw new Error(job.error || ("job " + job.status));
    $("extras-info").textContent = job.progress ? `${job.status}: step ${job.progress.step}/${job.progress.total}` : job.status;
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function runExtras() {
  const file = $("extras-file").files[0];
  if (!file) { show("Choose an image first."); return; }
  const image = await readFile(file);
  const op = $("extras-op").value;
  $("extras-run").disabled = true;
  show("");
  try {
    let after;
    if (op === "upscale") {
      const result = await api("/api/v1/upscale", { method: "POST", body: JSON.stringify({
        image, upscaler: $("extras-upscaler").value, scale: number("extras-scale") || 4 }) });
      after = "data:image/png;base64," + result.image;
      $("extras-info").textContent = `${result.width}x${result.height} with ${result.upscaler} in ${result.seconds} s`;
    } else {
      const body = { image, model: $("model").value || null, seed: number("seed") ?? -1 };
      if ($("extras-prompt").value) body.prompt = $("extras-prompt").value;
      if (number("extras-strength") !== null) body.strength = number("extras-strength");
      if (op === "restore") body.upscaler = $("extras-upscaler").value;
      const created = await api(`/api/v1/recipes/${op}`, { method: "POST", body: JSON.stringify(body) });
      const job = await waitForJob(created.id);
      after = await imageURL(job.images[0].url);
      $("extras-info").textContent = job.result.infotexts[0];
    }
    $("extras-before").src = image;
    $("extras-after").src = after;
    $("extras-download").href = after;
    $("extras-download").hidden = false;
    $("extras-compare").hidden = false;
    setCompare($("extras-slider").value);
  } catch (error) { show(error.message); } finally { $("extras-run").disabled = false; }
}

function setupExtras() {
  $("extras-run").addEventListener("click", runExtras);
  $("extras-slider").addEventListener("input", (e) => setCompare(e.target.value));
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = reject;
    reader.readAsDataURL(file);
  });
}

// ------------------------------------------------------------------ PNG info (drop anywhere)

async function readParameters(file) {
  const dataURL = await readFile(file);
  const info = await api("/sdapi/v1/png-info", { method: "POST", body: JSON.stringify({ image: dataURL }) });
  if (info.items && info.items.sfumato) { fillForm(JSON.parse(info.items.sfumato).request); }
  else if (info.info) {
    const p = info.parameters;
    fillForm({ prompt: p.prompt, negative_prompt: p["Negative prompt"], steps: p.Steps, cfg_scale: p["CFG scale"],
               seed: p.Seed, sampler: p.Sampler, width: (p.Size || "").split("x")[0], height: (p.Size || "").split("x")[1] });
  } else { show("That PNG carries no generation parameters."); return; }
  show("Parameters read from " + file.name + ".", true);
}

function setupDrops() {
  const zone = $("dropzone");
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("init-file").click(); } });
  $("init-file").addEventListener("change", async () => { if ($("init-file").files[0]) await loadInit(await readFile($("init-file").files[0])); });
  document.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  document.addEventListener("dragleave", () => zone.classList.remove("over"));
  document.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (!file) return;
    try {
      if (zone.contains(e.target)) await loadInit(await readFile(file));
      else await readParameters(file);
    } catch (error) { show(error.message); }
  });
}

// ------------------------------------------------------------------ gallery and queue

function jobPrompt(job) {  // what a job is about, for lists: its prompt, or an animation's mode and first prompt
  const animation = job.request.animation;
  if (!animation) return job.request.prompt;
  const first = Object.values(animation.prompts || {})[0] || (animation.scenes || [])[0] || animation.generation.prompt;
  return `animation (${animation.mode}): ${first}`;
}

async function loadGallery() {
  try {
    const { jobs } = await api("/api/v1/jobs?limit=60");
    $("gallery").replaceChildren();
    for (const job of jobs.filter((j) => j.status === "completed")) {  // animation frames reuse their settings
      const view = job.request.animation ? { ...job, request: { ...job.request.animation.generation, prompt: jobPrompt(job) } } : job;
      for (let i = 0; i < job.images.length; i++) await addThumb($("gallery"), view, job.images[i], i);
    }
  } catch (error) { show(error.message); }
}

async function loadQueue() {
  try {
    const { jobs } = await api("/api/v1/jobs?limit=100");
    const rows = jobs.filter((j) => j.status === "queued" || j.status === "running").reverse().map((job) => {
      const row = document.createElement("tr");
      row.dataset.job = job.id;
      const progress = job.progress ? `${job.progress.step}/${job.progress.total}` : "";
      row.innerHTML = `<td>${job.status}</td><td>${escapeHTML(jobPrompt(job))}</td><td>${progress}</td><td></td>`;
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Cancel";
      button.setAttribute("aria-label", "Cancel job " + jobPrompt(job));
      button.addEventListener("click", async () => { await cancelJob(job.id); loadQueue(); });
      row.lastChild.append(button);
      return row;
    });
    $("queue-rows").replaceChildren(...rows);
  } catch (error) { show(error.message); }
}

// ------------------------------------------------------------------ start

// ------------------------------------------------------------------ animate

function fileDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("could not read " + file.name));
    reader.readAsDataURL(file);
  });
}

async function loadMotionModules() {
  try {
    const listed = await api("/api/v1/motion-modules");
    $("anim-motion").replaceChildren(new Option("none", ""), ...listed.motion_modules.map((n) => new Option(n, n)));
  } catch (error) { /* listed again on the next load */ }
}

async function animationBody() {
  const form = buildRequest();
  const generation = {};
  for (const key of ["prompt", "negative_prompt", "model", "sampler", "preset", "steps", "cfg_scale", "seed", "width",
                     "height", "vae", "loras", "styles"]) if (form[key] !== undefined) generation[key] = form[key];
  if (!generation.negative_prompt && settings().defaultNegative) generation.negative_prompt = settings().defaultNegative;
  const body = { generation, mode: $("anim-mode").value, frames: number("anim-frames") || 16, fps: number("anim-fps") || 8,
                 loop: $("anim-loop").checked, strength: $("anim-strength").value.trim() || 0.5,
                 zoom: $("anim-zoom").value.trim() || 1, angle: $("anim-angle").value.trim() || 0, formats: ["gif", "mp4"] };
  const keyframes = $("anim-keyframes").value.trim();
  if (keyframes) body.prompts = keyframes;
  const seeds = $("anim-seeds").value.trim();
  if (seeds) body.seeds = seeds;
  if (body.mode === "story") {
    body.subject = $("anim-subject").value.trim();
    body.scenes = $("anim-scenes").value.split("\n").map((s) => s.trim()).filter(Boolean);
    body.frames = body.scenes.length || 1;
  }
  if (body.mode === "video" && $("anim-video").files[0]) body.video = await fileDataURL($("anim-video").files[0]);
  if (body.mode === "interpolate") body.images = await Promise.all([...$("anim-images").files].map(fileDataURL));
  if (body.mode === "motion") body.motion_adapter = $("anim-motion").value || null;
  if (body.mode === "loopback" && $("use-init").checked && state.initLoaded) body.init_image = $("init-canvas").toDataURL("image/png");
  return body;
}

async function runAnimation() {
  show("");
  $("anim-run").disabled = true;
  $("anim-metrics").textContent = "";
  try {
    const body = await animationBody();
    if (!body.prompts && !body.generation.prompt.trim() && !(body.scenes || []).length) {
      throw new Error("Write a prompt (in the form) or prompt keyframes first.");
    }
    const job = await api("/api/v1/animations", { method: "POST", body: JSON.stringify(body) });
    state.currentJob = job.id;
    $("anim-progress").textContent = "queued";
    await readEvents(job.id, async (name, data) => {
      if (name === "progress") $("anim-progress").textContent = `step ${data.step}/${data.total}`;
      if (name === "failed") { show("Animation failed: " + data.error); $("anim-progress").textContent = "failed"; }
      if (name === "cancelled") $("anim-progress").textContent = "cancelled";
      if (name === "completed") {
        const m = data.result.metrics;
        $("anim-progress").textContent = `${m.frames} frames in ${data.result.seconds.toFixed(1)} s`;
        $("anim-metrics").textContent = m.temporal_ssim === undefined ? "" :
          `temporal SSIM ${m.temporal_ssim.toFixed(4)} (worst pair ${m.worst_pair}: ${m.temporal_ssim_worst.toFixed(4)}), ` +
          `flicker ${m.flicker.toFixed(4)}` + (m.subject_consistency === undefined ? "" : `, subject consistency ${m.subject_consistency.toFixed(4)}`);
        const gif = await imageURL(data.result.videos.gif);
        $("anim-result").src = gif; $("anim-result").hidden = false;
        $("anim-gif").href = gif; $("anim-gif").hidden = false;
        const mp4 = await imageURL(data.result.videos.mp4);
        $("anim-video-out").src = mp4; $("anim-video-out").hidden = false;
        $("anim-mp4").href = mp4; $("anim-mp4").hidden = false;
      }
    });
  } catch (error) {
    show(error.message);
    $("anim-progress").textContent = "";
  } finally {
    $("anim-run").disabled = false;
    state.currentJob = null;
  }
}

// ------------------------------------------------------------------ merge, VAE

async function loadModelTools(models) {
  const vaes = await api("/sdapi/v1/sd-vae");
  const keep = $("vae").value;
  $("vae").replaceChildren(new Option("Automatic (the model's)", ""), ...vaes.map((v) => new Option(v.model_name, v.model_name)));
  $("vae").value = vaes.some((v) => v.model_name === keep) ? keep : "";
  $("merge-vae").replaceChildren(...["merge", "A", "B"].map((v) => new Option(v === "merge" ? "merge" : "from " + v, v)),
                                 ...vaes.map((v) => new Option("bake in " + v.model_name, v.model_name)));
  const names = models.map((m) => m.model_name);
  const chosen = ["merge-a", "merge-b", "merge-c"].map((id) => $(id).value);
  for (const id of ["merge-a", "merge-b"]) $(id).replaceChildren(...names.map((n) => new Option(n, n)));
  $("merge-c").replaceChildren(new Option("none", ""), ...names.map((n) => new Option(n, n)));
  ["merge-a", "merge-b", "merge-c"].forEach((id, i) => { if (chosen[i] && names.includes(chosen[i])) $(id).value = chosen[i]; });
  if (!chosen[1] && names.length > 1) $("merge-b").value = names[1];
  const presets = await api("/api/v1/merge/presets");
  $("merge-preset").replaceChildren(new Option("none (one α)", ""), ...presets.presets.map((p) => new Option(p, p)));
}

async function runMerge() {
  const blocks = $("merge-blocks").value.trim();
  const body = { a: $("merge-a").value, b: $("merge-b").value, c: $("merge-c").value || null, alpha: number("merge-alpha") ?? 0.5,
                 block_preset: $("merge-preset").value || null, text_encoder: $("merge-te").value, vae: $("merge-vae").value,
                 half: $("merge-half").checked, name: $("merge-name").value.trim() || "merged" };
  if (blocks) body.block_weights = blocks.split(",").map(Number);
  $("merge-run").disabled = true;
  $("merge-info").textContent = "merging…";
  show("");
  try {
    const result = await api("/api/v1/merge", { method: "POST", body: JSON.stringify(body) });
    $("merge-info").textContent = `saved ${result.file} (${result.mode}) in ${result.seconds} s`;
    const models = await api("/sdapi/v1/sd-models");
    $("model").replaceChildren(...models.map((m) => new Option(m.model_name, m.model_name)));
    $("model").value = result.name;
    await loadModelTools(models);
  } catch (error) { $("merge-info").textContent = ""; show(error.message); } finally { $("merge-run").disabled = false; }
}

async function loadLists() {
  try {
    const [models, samplers, loras, styles] = await Promise.all([api("/sdapi/v1/sd-models"), api("/sdapi/v1/samplers"),
                                                                 api("/api/v1/loras"), api("/sdapi/v1/prompt-styles")]);
    $("styles").replaceChildren(...styles.map((s) => new Option(s.name, s.name)));
    $("styles").title = styles.map((s) => `${s.name}: ${s.prompt}`).join("\n");
    $("styles-empty").hidden = styles.length > 0;
    $("styles").hidden = styles.length === 0;
    $("model").replaceChildren(...models.map((m) => new Option(m.model_name, m.model_name)));
    await loadControlLists();
    await loadUpscalers();
    await loadModelTools(models);
    for (const s of samplers) $("sampler").add(new Option(s.name, s.name));
    state.loras = loras.loras;
    $("lora-empty").hidden = state.loras.length > 0;
    for (const name of state.loras) {
      const row = document.createElement("div");
      row.className = "grid2";
      row.innerHTML = `<div class="check"><input type="checkbox" id="lora-on-${name}"><label for="lora-on-${name}">${escapeHTML(name)}</label></div>` +
        `<div><label for="lora-w-${name}">Weight</label><input type="number" id="lora-w-${name}" value="1" step="0.05" min="-2" max="2"></div>`;
      $("loras").append(row);
    }
  } catch (error) { show(error.message); }
}

function setupSize() {
  const apply = () => {
    const preset = $("size-preset").value;
    if (!preset) { $("width").value = ""; $("height").value = ""; return; }
    const side = Number(preset.split("x")[0]);
    const [a, b] = $("aspect").value.split(":").map(Number);
    const scale = Math.sqrt((side * side) / (a * b));
    $("width").value = Math.max(16, Math.round((a * scale) / 8) * 8);
    $("height").value = Math.max(16, Math.round((b * scale) / 8) * 8);
  };
  $("size-preset").addEventListener("change", apply);
  $("aspect").addEventListener("change", apply);
}

function setupSettings() {
  const s = settings();
  $("api-key").value = s.apiKey || "";
  $("theme").value = s.theme || "system";
  $("default-negative").value = s.defaultNegative || "";
  $("save-settings").addEventListener("click", () => {
    localStorage.setItem("sfumato.settings", JSON.stringify({ apiKey: $("api-key").value, theme: $("theme").value,
                                                               defaultNegative: $("default-negative").value }));
    applyTheme();
    show("Settings saved.", true);
    loadLists();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  applyTheme();
  setupTabs();
  setupSettings();
  setupSize();
  setupMask();
  setupControl();
  setupExtras();
  $("merge-run").addEventListener("click", runMerge);
  $("anim-run").addEventListener("click", runAnimation);
  loadMotionModules();
  setupDrops();
  $("prompt").addEventListener("input", updatePromptInfo);
  $("generate-form").addEventListener("submit", generate);
  document.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("generate-form").requestSubmit(); });
  $("cancel").addEventListener("click", () => state.currentJob && cancelJob(state.currentJob));
  $("seed-random").addEventListener("click", () => { $("seed").value = -1; });
  $("seed-reuse").addEventListener("click", () => { if (state.lastSeed !== null) $("seed").value = state.lastSeed; });
  setInterval(() => { if (!$("view-queue").hidden) loadQueue(); }, 1000);
  updatePromptInfo();
  loadLists();
});
