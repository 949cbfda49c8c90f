// The gallery of finished jobs and the queue.

import { $, api, escapeHTML, show } from "./common.js";
import { addThumb, cancelJob } from "./generate.js";

export function jobPrompt(job) {  // what a job is about, for lists: its prompt, or an animation's mode and first prompt
  const animation = job.request.animation;
  if (!animation) return job.request.prompt;
  const first = Object.values(animation.prompts || {})[0] || (animation.scenes || [])[0] || animation.generation.prompt;
  return `animation (${animation.mode}): ${first}`;
}

export async function loadGallery() {
  try {
    const { jobs } = await api("/api/v1/jobs?limit=60");
    $("gallery").replaceChildren();
    for (const job of jobs.filter((j) => j.status === "completed")) {  // animation frames reuse their settings
      const view = job.request.animation ? { ...job, request: { ...job.request.animation.generation, prompt: jobPrompt(job) } } : job;
      for (let i = 0; i < job.images.length; i++) await addThumb($("gallery"), view, job.images[i], i);
    }
  } catch (error) { show(error.message); }
}

export async function loadQueue() {
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
