// The Edit panel: the init image and a mask drawn on a canvas.

import { $, state } from "./common.js";

export async function loadInit(src) {
  const img = new Image();
  img.src = src;
  await img.decode();
  for (const id of ["init-canvas", "mask-canvas"]) { $(id).width = img.naturalWidth; $(id).height = img.naturalHeight; }
  $("init-canvas").getContext("2d").drawImage(img, 0, 0);
  state.maskHistory = [];
  state.initLoaded = true;
  $("use-init").checked = true;
  const w = Number($("width").value), h = Number($("height").value);
  $("edit-size-note").textContent = (w && h && (w !== img.naturalWidth || h !== img.naturalHeight))
    ? `The image is ${img.naturalWidth}×${img.naturalHeight}; the output stays ${w}×${h} as the form says (clear ` +
      "Width and Height to keep the image's size)." : `The image is ${img.naturalWidth}×${img.naturalHeight}.`;
}

export function imageDataURL(img) {  // a loaded <img> (an object URL of a result) as a PNG data URL
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  canvas.getContext("2d").drawImage(img, 0, 0);
  return canvas.toDataURL("image/png");
}

export function maskDataURL() {  // white = repaint, on black
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

export function canvasPoint(canvas, e) {  // pointer position in the canvas's own pixels
  const rect = canvas.getBoundingClientRect();
  return [(e.clientX - rect.left) * canvas.width / rect.width, (e.clientY - rect.top) * canvas.height / rect.height];
}

export function setupMask() {
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
