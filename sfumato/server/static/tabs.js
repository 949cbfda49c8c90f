// The tab bar: selecting a tab shows its panel (and loads the gallery or queue when opened).

import { $ } from "./common.js";
import { loadGallery, loadQueue } from "./gallery.js";

export function selectTab(name) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.id === "tab-" + name;
    tab.setAttribute("aria-selected", on);
    tab.tabIndex = on ? 0 : -1;
    $(tab.getAttribute("aria-controls")).hidden = !on;
  }
  if (name === "gallery") loadGallery();
  if (name === "queue") loadQueue();
}

export function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => {
      selectTab(tab.id.slice(4));
      $(tab.getAttribute("aria-controls")).scrollIntoView({ block: "nearest" });  // phones: the panel is below the form
    });
    tab.addEventListener("keydown", (e) => {
      const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
      if (!step) return;
      const next = tabs[(i + step + tabs.length) % tabs.length];
      next.focus();
      selectTab(next.id.slice(4));
    });
  });
}
