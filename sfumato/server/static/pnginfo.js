// Reading generation parameters from a dropped PNG (A1111 png-info).

import { $, api, readFile, show } from "./common.js";
import { loadInit } from "./edit.js";
import { fillForm } from "./generate.js";

export async function readParameters(file) {
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

export function setupDrops() {
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
