// Shared by every tab: the element lookup, UI state, settings (API key, theme), HTTP helpers and file reading.

export const $ = (id) => document.getElementById(id);

export const state = { lastSeed: null, currentJob: null, maskHistory: [], initLoaded: false, loras: [] };

export function settings() {
  return JSON.parse(localStorage.getItem("sfumato.settings") || "{}");
}

export function applyTheme() {
  const theme = settings().theme || "system";
  if (theme === "system") document.documentElement.removeAttribute("data-theme");
  else document.documentElement.dataset.theme = theme;
}

export function headers(json = true) {
  const h = {};
  const key = settings().apiKey;
  if (key) h["Authorization"] = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

export function show(text, ok = false) {
  const box = $("message");
  box.textContent = text;
  box.className = ok ? "ok" : "";
  box.hidden = !text;
}

export async function explain(response) {
  let detail = "";
  try { const body = await response.json(); detail = (body.error && body.error.message) || body.detail || ""; } catch (e) { /* not JSON */ }
  if (response.status === 401) return "The server needs an API key: set it in Settings. (" + detail + ")";
  if (response.status === 422) return "Invalid request: " + detail;
  if (response.status === 429) return "The queue is full; retry in " + (response.headers.get("Retry-After") || "a few") + " s.";
  return detail || ("HTTP " + response.status);
}

export async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(options.body !== undefined), ...(options.headers || {}) } });
  if (!response.ok) throw new Error(await explain(response));
  return response.status === 204 ? null : response.json();
}

export async function imageURL(path) {  // fetch with the API key, so <img> works when auth is on
  const response = await fetch(path, { headers: headers(false) });
  if (!response.ok) throw new Error(await explain(response));
  return URL.createObjectURL(await response.blob());
}

export function escapeHTML(text) {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

export function number(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

export function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = reject;
    reader.readAsDataURL(file);
  });
}
