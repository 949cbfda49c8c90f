// Start: wire every panel once the page has loaded.

import { loadMotionModules, runAnimation } from "./animate.js";
import { $, applyTheme, state } from "./common.js";
import { setupControl } from "./control.js";
import { setupMask } from "./edit.js";
import { setupExtras } from "./extras.js";
import { loadQueue } from "./gallery.js";
import { cancelJob, generate } from "./generate.js";
import { setupDrops } from "./pnginfo.js";
import { updatePromptInfo } from "./prompt.js";
import { loadLists, setupSettings, setupSize } from "./settings.js";
import { setupTabs } from "./tabs.js";
import { runMerge } from "./tools.js";

document.addEventListener("DOMContentLoaded", () => {
  applyTheme();
  setupTabs();
  setupSettings();
  setupSize();
  setupMask();
  setupControl();
  setupExtras();
  $("merge-run").addEventListener("click", runMerge);
  $("anim-run").addEventListener("click", runAnimation);
  $("anim-mode").addEventListener("change", () => {  // video models take 1 + a multiple of 4 (Wan) or 8 (LTX) frames
    if ($("anim-mode").value === "video-model" && Number($("anim-frames").value) === 16) $("anim-frames").value = 17;
  });
  loadMotionModules();
  setupDrops();
  $("prompt").addEventListener("input", updatePromptInfo);
  $("generate-form").addEventListener("submit", generate);
  $("edit-generate").addEventListener("click", () => $("generate-form").requestSubmit());  // the Edit panel's own
  document.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("generate-form").requestSubmit(); });
  $("cancel").addEventListener("click", () => state.currentJob && cancelJob(state.currentJob));
  $("seed-random").addEventListener("click", () => { $("seed").value = -1; });
  $("seed-reuse").addEventListener("click", () => { if (state.lastSeed !== null) $("seed").value = state.lastSeed; });
  setInterval(() => { if (!$("view-queue").hidden) loadQueue(); }, 1000);
  updatePromptInfo();
  loadLists();
});
