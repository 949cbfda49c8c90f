// Prompt syntax highlighting and the token counter (the server's tokenizer, else an estimate).

import { $, api, escapeHTML } from "./common.js";

export const FLAG_RE = /--(ar|aspect|no|seed|tile|chaos|c|stylize|s|quality|q)\b/g;

export function highlight(text) {
  let html = escapeHTML(text);
  html = html.replace(/&lt;lora:[^&]*&gt;/g, (m) => `<span class="lora">${m}</span>`);
  html = html.replace(/\(([^()]*)\)/g, (m) => `<span class="em">${m}</span>`);
  // [from:to:when] / [to:when] prompt editing and [a|b] alternation, else [de-emphasis]
  html = html.replace(/\[([^\[\]]*)\]/g, (m, inner) =>
    /\|/.test(inner) || /:\s*[+-]?[\d.]+\s*$/.test(inner) ? `<span class="sched">${m}</span>` : `<span class="de">${m}</span>`);
  html = html.replace(/\{[^{}]*\|[^{}]*\}|__[\w\-\/. ]+?__/g, (m) => `<span class="dyn">${m}</span>`);
  html = html.replace(/\bBREAK\b/g, '<span class="brk">BREAK</span>');
  html = html.replace(/\bAND\b/g, '<span class="and">AND</span>');
  html = html.replace(FLAG_RE, (m) => `<span class="flag">${m}</span>`);
  return html;
}

export function approximateTokens(text) {  // CLIP BPE is about one token per word piece or punctuation mark
  const plain = text.replace(/--\w+[^-]*/g, "").replace(/<lora:[^>]*>/g, "").replace(/:\s*[\d.]+\)/g, ")");
  return (plain.toLowerCase().match(/[a-z]+|\d|[^\sa-z\d()\[\]]/g) || []).length;
}

export function showTokens(chunks, length, exact, scheduled = 1) {
  const last = chunks[chunks.length - 1] || 0;
  const label = chunks.length > 1 ? `chunk ${chunks.length}: ` : "";
  // AND parts and prompt editing encode several texts: show the longest and how many there are
  const many = scheduled > 1 ? ` (longest of ${scheduled} scheduled prompts)` : "";
  $("prompt-tokens").textContent = `${label}${exact ? "" : "≈"}${last}/${length} tokens${many}`;
}

let tokenTimer = null;

export function updatePromptInfo() {
  const text = $("prompt").value;
  const chunks = text.split(/\bBREAK\b/).map(approximateTokens);
  showTokens(chunks, 75, false);  // instant estimate, replaced by the model tokenizer's count
  clearTimeout(tokenTimer);
  tokenTimer = setTimeout(async () => {
    try {
      const counts = await api("/api/v1/tokens", { method: "POST", body: JSON.stringify({ prompt: text, model: $("model").value || null }) });
      if ($("prompt").value === text) showTokens(counts.chunks, counts.chunk_length, true, (counts.scheduled || []).length);
    } catch (error) { /* keep the estimate (e.g. an unknown flag while typing) */ }
  }, 250);
  const flags = [...text.matchAll(FLAG_RE)].map((m) => m[0]);
  $("prompt-flags").textContent = flags.length ? "flags: " + flags.join(" ") : "";
  $("prompt-highlight").innerHTML = highlight(text);
}
