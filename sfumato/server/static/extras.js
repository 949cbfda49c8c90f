// The Extras panel: upscaling and the image recipes, with a before/after slider.

import { $, api, imageURL, number, readFile, show, state } from "./common.js";

export function useExtrasImage(dataURL) {  // a result sent here ("Upscale"), used until a file is chosen
  state.extrasImage = dataURL;
  $("extras-op").value = "upscale";
  $("extras-source").textContent = "Using the image from the results (or choose a file).";
}

export async function loadUpscalers() {
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

export function setCompare(percent) {
  $("extras-after-clip").style.clipPath = `inset(0 0 0 ${percent}%)`;
}

export async function waitForJob(id) {
  for (;;) {
    const job = await api(`/api/v1/jobs/${id}`);
    if (job.status === "completed") return job;
    if (job.status === "failed" || job.status === "cancelled") throw new Error(job.error || ("job " + job.status));
    $("extras-info").textContent = job.progress ? `${job.status}: step ${job.progress.step}/${job.progress.total}` : job.status;
    await new Promise((r) => setTimeout(r, 250));
  }
}

export async function runExtras() {
  const file = $("extras-file").files[0];
  if (!file && !state.extrasImage) { show("Choose an image first."); return; }
  const image = file ? await readFile(file) : state.extrasImage;
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
    const shown = new Image();
    shown.src = after;
    await shown.decode();
    if (shown.naturalWidth < 256) {  // a small model's result: say it is enlarged here, not made this size
      $("extras-info").textContent += ` — ${shown.naturalWidth}×${shown.naturalHeight} px, shown enlarged`;
    }
    $("extras-before").src = image;
    $("extras-after").src = after;
    $("extras-download").href = after;
    $("extras-download").hidden = false;
    $("extras-compare").hidden = false;
    setCompare($("extras-slider").value);
  } catch (error) { show(error.message); } finally { $("extras-run").disabled = false; }
}

export function setupExtras() {
  $("extras-run").addEventListener("click", runExtras);
  $("extras-file").addEventListener("change", () => { state.extrasImage = null; $("extras-source").textContent = ""; });
  $("extras-slider").addEventListener("input", (e) => setCompare(e.target.value));
}
