// modstream review console: keyboard shortcuts, revealing media, the time left on the queue.
// Light by design: every action is a plain form post that works without this script.
"use strict";

function formatLeft(ms) {
  const minutes = Math.floor(Math.abs(ms) / 60000);
  const d = Math.floor(minutes / 1440), h = Math.floor(minutes / 60) % 24, m = minutes % 60;
  const span = d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m` : "under a minute";
  return ms >= 0 ? `${span} left` : `overdue by ${span}`;
}

function refreshTimes() {
  for (const el of document.querySelectorAll("time.left[data-deadline]")) {
    const left = Number(el.dataset.deadline) - Date.now();
    el.textContent = formatLeft(left);
    el.closest("tr")?.classList.toggle("overdue", left < 0);
  }
}

function toggleMedia() {
  const figure = document.getElementById("media");
  const button = document.getElementById("reveal");
  if (!figure || !button) return;
  const veiled = figure.classList.toggle("veiled");
  button.setAttribute("aria-pressed", String(!veiled));
  button.textContent = veiled ? "Reveal media (v)" : "Hide media (v)";
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  if (event.target.closest("input, textarea, select, [contenteditable]")) return;
  const target = document.querySelector(`[data-key="${CSS.escape(event.key)}"]`);
  if (!target || target.disabled) return;
  event.preventDefault();
  if (target.form && target.type === "submit") target.form.requestSubmit(target);
  else target.click();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("reveal")?.addEventListener("click", toggleMedia);
  document.addEventListener("keydown", onKey);
  // A verdict is sent once: a second key press or click while it is on its way does nothing.
  for (const form of document.querySelectorAll("form[method=post]")) {
    form.addEventListener("submit", () => {
      setTimeout(() => form.querySelectorAll("button").forEach((b) => { b.disabled = true; }), 0);
    });
  }
  refreshTimes();
  setInterval(refreshTimes, 30000);
});
