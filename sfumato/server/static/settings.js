// Model, sampler, size and LoRA lists from the server, and the Settings panel.

import { $, api, applyTheme, escapeHTML, settings, show, state } from "./common.js";
import { loadControlLists } from "./control.js";
import { loadUpscalers } from "./extras.js";
import { loadModelTools } from "./tools.js";

export async function loadLists() {
  try {
    const [models, samplers, loras, styles] = await Promise.all([api("/sdapi/v1/sd-models"), api("/sdapi/v1/samplers"),
                                                                 api("/api/v1/loras"), api("/sdapi/v1/prompt-styles")]);
    $("styles").replaceChildren(...styles.map((s) => new Option(s.name, s.name)));
    $("styles").title = styles.map((s) => `${s.name}: ${s.prompt}`).join("\n");
    $("styles-empty").hidden = styles.length > 0;
    $("styles").hidden = styles.length === 0;
    const model = $("model").value, sampler = $("sampler").value;  // a reload keeps the choices
    $("model").replaceChildren(...models.map((m) => new Option(m.family ? `${m.model_name} (${m.family})` : m.model_name,
                                                               m.model_name)));
    if (models.some((m) => m.model_name === model)) $("model").value = model;
    state.nativeSizes = Object.fromEntries(models.map((m) => [m.model_name, m.native_size]));
    state.modelSamplers = Object.fromEntries(models.map((m) => [m.model_name, m.samplers]));
    state.modelFast = Object.fromEntries(models.map((m) => [m.model_name, m.fast]));
    sizesForModel();
    await loadControlLists();
    await loadUpscalers();
    await loadModelTools(models);
    state.samplers = samplers.map((s) => s.name);
    samplersForModel(sampler);
    state.loras = loras.loras;
    for (const row of [...$("loras").querySelectorAll(".grid2")]) row.remove();  // rebuilt, never appended twice
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

export function samplersForModel(keep) {
  // the samplers the selected model takes (a flow family takes a few; a video model its own): others would be refused
  const chosen = keep ?? $("sampler").value;
  const allowed = state.modelSamplers?.[$("model").value] || state.samplers || [];
  $("sampler").replaceChildren(new Option("model default", ""), ...allowed.map((name) => new Option(name, name)));
  $("sampler").value = allowed.includes(chosen) ? chosen : "";
}

export function sizesForModel() {
  // the Size presets around the selected model's native side (a 32 px model is not offered 1024²)
  const native = state.nativeSizes?.[$("model").value];
  const chosen = $("size-preset").value;
  const sides = native ? [...new Set([native, Math.round((native * 1.5) / 8) * 8, native * 2])] : [512, 768, 1024];
  $("size-preset").replaceChildren(new Option(native ? `model native (${native}²)` : "model native", ""),
                                   ...sides.map((side) => new Option(`${side}x${side}`, `${side}x${side}`)));
  if ([...$("size-preset").options].some((o) => o.value === chosen)) $("size-preset").value = chosen;
  sizeHint();
}

function sizeHint() {  // a warning above twice the model's native side
  const native = state.nativeSizes?.[$("model").value];
  const w = Number($("width").value) || native || 0, h = Number($("height").value) || native || 0;
  const over = native && w * h > 4 * native * native;
  $("size-hint").hidden = !over;
  $("size-hint").textContent = over ? `Above 2× this model's native ${native} px: slow, and the model tends to ` +
    "repeat itself (tile). Try the hires fix instead." : "";
}

export function setupSize() {
  $("model").addEventListener("change", () => { sizesForModel(); samplersForModel(); });
  $("width").addEventListener("input", sizeHint);
  $("height").addEventListener("input", sizeHint);
  const apply = () => {
    const preset = $("size-preset").value;
    if (!preset) { $("width").value = ""; $("height").value = ""; return; }
    const side = Number(preset.split("x")[0]);
    const [a, b] = $("aspect").value.split(":").map(Number);
    const scale = Math.sqrt((side * side) / (a * b));
    $("width").value = Math.max(16, Math.round((a * scale) / 8) * 8);
    $("height").value = Math.max(16, Math.round((b * scale) / 8) * 8);
    sizeHint();
  };
  $("size-preset").addEventListener("change", apply);
  $("aspect").addEventListener("change", apply);
}

export function setupSettings() {
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
