// The gallery of finished jobs and the queue.

import { $, api, escapeHTML, show } from "./common.js";
import { addThumb, cancelJob } from "./generate.js";

export function jobPrompt(job) {  // what a job is about, for lists: its prompt, or an animation's mode and first prompt
  const animation = job.request.animation;
  if (!animation) return job.request.prompt;
  const first = Object.values(animation.prompts || {})[0] || (animation.scenes || [])[0] || animation.generation.prompt;
  return `animation (${animation.mode}): ${first}`;
}

const PAGE = 24;  // jobs per gallery page

function animationRequest(job) {  // an animation's generation settings with its first real prompt (not a label)
  const animation = job.request.animation;
  const first = Object.values(animation.prompts || {})[0] || (animation.scenes || [])[0] || animation.generation.prompt;
  return { ...animation.generation, prompt: first };
}

export async function loadGallery(pages = 1) {
  try {
    const { jobs } = await api("/api/v1/jobs?limit=500");
    const done = jobs.filter((j) => j.status === "completed");
    const shown = done.slice(0, pages * PAGE);
    $("gallery").replaceChildren();
    for (const job of shown) {
      if (job.request.animation) {  // one entry per animation: its first frame, with the frame count
        const caption = `animation (${job.request.animation.mode}), ${job.images.length} frames`;
        await addThumb($("gallery"), { ...job, request: animationRequest(job) }, job.images[0], 0, caption);
        continue;
      }
      for (let i = 0; i < job.images.length; i++) await addThumb($("gallery"), job, job.images[i], i);
    }
    $("gallery-more").hidden = done.length <= shown.length;
    $("gallery-more").onclick = () => loadGallery(pages + 1);
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
