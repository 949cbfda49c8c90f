// The Merge panel (checkpoint merger) and the VAE choice.

import { $, api, number, show } from "./common.js";

export async function loadModelTools(models) {
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

export async function runMerge() {
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
