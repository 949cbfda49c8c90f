// The Control panel: one ControlNet unit (preprocessor, model, image) and its preview.

import { $, api, number, readFile, show } from "./common.js";
import { canvasPoint } from "./edit.js";

export function clearControl() {
  const ctx = $("control-canvas").getContext("2d");
  ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, 256, 256);
}

export function setupControl() {
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

export async function loadControlLists() {
  const [modules, models] = await Promise.all([api("/controlnet/module_list"), api("/controlnet/model_list")]);
  const chosen = $("control-module").value;
  $("control-module").replaceChildren(...modules.module_list.map((m) => new Option(m, m)));
  $("control-module").value = modules.module_list.includes(chosen) ? chosen : "scribble";
  $("control-model").replaceChildren(new Option("default (shipped)", ""), ...models.model_list.map((m) => new Option(m, m)));
}

export async function loadControlImage(src) {  // a result as the control image ("Use as control")
  const img = new Image();
  img.src = src;
  await img.decode();
  clearControl();
  $("control-canvas").getContext("2d").drawImage(img, 0, 0, 256, 256);
  $("use-control").checked = true;
}
