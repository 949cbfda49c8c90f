// The Animate panel: an animation job from the form.

import { $, api, imageURL, number, readFile, settings, show, state } from "./common.js";
import { buildRequest, readEvents } from "./generate.js";

export async function loadMotionModules() {
  try {
    const listed = await api("/api/v1/motion-modules");
    $("anim-motion").replaceChildren(new Option("none", ""), ...listed.motion_modules.map((n) => new Option(n, n)));
  } catch (error) { /* listed again on the next load */ }
}

export async function animationBody() {
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
  if (body.mode === "video" && $("anim-video").files[0]) body.video = await readFile($("anim-video").files[0]);
  if (body.mode === "interpolate" || body.mode === "video-model")
    body.images = await Promise.all([...$("anim-images").files].map(readFile));
  if (body.mode === "video-model") delete generation.sampler;  // a video model runs its own scheduler
  if (body.mode === "motion") body.motion_adapter = $("anim-motion").value || null;
  if (body.mode === "loopback" && $("use-init").checked && state.initLoaded) body.init_image = $("init-canvas").toDataURL("image/png");
  return body;
}

export async function runAnimation() {
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
