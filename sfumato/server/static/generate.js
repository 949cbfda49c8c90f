// The Generate form as a native job request and back, the job's events, thumbnails and cancelling.

import { $, api, explain, headers, imageURL, number, settings, show, state } from "./common.js";
import { loadControlImage } from "./control.js";
import { imageDataURL, loadInit, maskDataURL } from "./edit.js";
import { useExtrasImage } from "./extras.js";
import { updatePromptInfo } from "./prompt.js";
import { selectTab } from "./tabs.js";

export function buildRequest() {
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
    consistent: Number($("consistent").value) || 0,
  };
  if ($("fast").checked) {  // the model's few-step setting (its sfumato.json `fast`), else LCM at 2 steps
    const fast = (state.modelFast || {})[$("model").value] || { preset: "lcm", steps: 2 };
    if (fast.preset) request.preset = fast.preset;
    if (request.steps === null) request.steps = fast.steps;
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
    if ($("control-module").value.startsWith("reference")) request.controls[0].threshold_a = number("control-fidelity") ?? 0.5;
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

export function fillForm(request) {
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

export async function readEvents(jobId, onEvent) {  // SSE over fetch (EventSource cannot send the API key)
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

export async function addThumb(container, job, imageInfo, index, caption = null) {
  const card = document.createElement("figure");
  card.className = "thumb";
  const img = document.createElement("img");
  img.alt = `${job.request.prompt} (seed ${job.result.seeds[index]})`;
  img.src = await imageURL(imageInfo.url);
  card.append(img);
  if (caption) {
    const text = document.createElement("figcaption");
    text.className = "hint";
    text.textContent = caption;
    card.append(text);
  }
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
  button("Inpaint", async () => {
    await loadInit(img.src);
    selectTab("edit");
    $("view-edit").scrollIntoView({ block: "start" });
    show("Paint the area to repaint on the image, then press Inpaint.", true);
  });
  button("Upscale", () => { useExtrasImage(imageDataURL(img)); selectTab("extras"); });
  button("Use as control", async () => { await loadControlImage(img.src); selectTab("control"); });
  button("Info", () => { $("details").textContent = job.result.infotexts[index]; selectTab("gallery"); });
  const link = document.createElement("a");
  link.href = img.src;
  link.download = `${imageInfo.id}.png`;
  link.textContent = "Download";
  actions.append(link);
  card.append(actions);
  container.append(card);
}

function status(text) {  // the progress line, mirrored beside the Generate button (sticky: always in view)
  $("progress-text").textContent = text;
  $("generate-status").textContent = text === "idle" ? "" : text;
}

export async function generate(event) {
  event.preventDefault();
  show("");
  const request = buildRequest();
  if (!request.prompt.trim() && !request.init_image) { show("Write a prompt first."); $("prompt").focus(); return; }
  if (!request.negative_prompt && settings().defaultNegative) request.negative_prompt = settings().defaultNegative;
  selectTab("result");
  if (window.innerWidth <= 900) $("view-result").scrollIntoView({ block: "start" });  // one column: results below
  $("generate").disabled = true;
  const started = { at: 0, step: 0 };
  try {
    const views = $("views").value;  // a views sheet: the subject from each angle, one consistent batch
    const { prompt, consistent, ...rest } = request;
    const job = views
      ? await api("/api/v1/views", { method: "POST", body: JSON.stringify({ prompt, views, consistent: consistent || 1,
                                                                            settings: { ...rest, batch_size: 1, batch_count: 1 } }) })
      : await api("/api/v1/jobs", { method: "POST", body: JSON.stringify(request) });
    state.currentJob = job.id;
    $("cancel").disabled = false;
    status("queued");
    await readEvents(job.id, async (name, data) => {
      if (name === "queued") status(`queued (position ${data.position + 1})`);
      if (name === "progress") {
        $("progress").value = data.total ? data.step / data.total : 0;
        if (!started.at && data.step > 0) Object.assign(started, { at: performance.now(), step: data.step });
        const perStep = data.step > started.step ? (performance.now() - started.at) / (data.step - started.step) : 0;
        const eta = perStep ? ` — about ${Math.ceil((perStep * (data.total - data.step)) / 1000)} s left` : "";
        status(data.total ? `step ${data.step}/${data.total}${eta}` : "starting");
        if (data.preview) { $("preview").src = "data:image/png;base64," + data.preview; $("preview").hidden = false; }
      }
      if (name === "completed") {
        $("progress").value = 1;
        status(`done in ${data.result.seconds.toFixed(1)} s`);
        $("preview").hidden = true;
        state.lastSeed = data.result.seeds[0];
        $("results").replaceChildren();
        for (let i = 0; i < data.images.length; i++) await addThumb($("results"), data, data.images[i], i);
      }
      if (name === "failed") { show("Generation failed: " + data.error); status("failed: " + data.error); }
      if (name === "cancelled") { status("cancelled"); $("preview").hidden = true; }
    });
  } catch (error) {
    show(error.message);
    status(error.message);  // beside the button too, where the user is looking
  } finally {
    $("generate").disabled = false;
    $("cancel").disabled = true;
    state.currentJob = null;
  }
}

export async function cancelJob(id) {
  try { await api(`/api/v1/jobs/${id}`, { method: "DELETE" }); } catch (error) { show(error.message); }
}
