// runbookd console: the only script. Pages work without it; it adds live run updates (from the run's
// Server-Sent Events), countdowns to timed changes, and copy buttons. No inline script (CSP: script-src 'self').
"use strict";

function formatLeft(ms) {
  if (ms <= 0) return "now";
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + r + "s";
}

function startCountdowns() {
  const items = Array.from(document.querySelectorAll("time.countdown[datetime]"));
  if (!items.length) return;
  const tick = () => {
    for (const el of items) {
      const left = Date.parse(el.getAttribute("datetime")) - Date.now();
      el.textContent = formatLeft(left);
      el.title = el.getAttribute("datetime");
    }
  };
  tick();
  setInterval(tick, 1000);
}

function startCopyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      try {
        await navigator.clipboard.writeText(field.value);
      } catch (e) {
        field.select();
        document.execCommand("copy");
      }
      button.textContent = "Copied";
    });
  }
}

function followRun(box) {
  if (box.dataset.finished === "true" || !window.EventSource) return;
  const output = document.getElementById("run-output");
  let firstLine = true, refreshing = false, again = false;
  const refresh = async () => {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const response = await fetch(box.dataset.fragment, {credentials: "same-origin", headers: {"Accept": "text/html"}});
      if (response.ok) {
        const focused = document.activeElement && document.activeElement.closest("#run-live") ? document.activeElement.id : null;
        box.innerHTML = await response.text();
        if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
      }
    } finally {
      refreshing = false;
      if (again) { again = false; refresh(); }
    }
  };
  const source = new EventSource(box.dataset.events);
  const onEvent = (event) => {
    let message = {};
    try { message = JSON.parse(event.data); } catch (e) { return; }
    if (message.type === "step.output") {
      if (firstLine) { output.textContent = ""; firstLine = false; }
      const data = message.data || {};
      output.textContent += "[" + (message.step_id || "") + "] " + (data.line !== undefined ? data.line : JSON.stringify(data)) + "\n";
      return;
    }
    refresh();
    if (message.type === "run.finished") { source.close(); box.dataset.finished = "true"; }
  };
  source.onmessage = onEvent;
  for (const type of ["run.queued", "run.started", "run.finished", "run.resumed", "run.worker_lost", "run.cancel_requested",
                      "run.handed_over", "step.started", "step.finished", "step.retrying", "step.waiting_approval",
                      "step.approved", "step.rejected", "step.output", "step.compensated"]) {
    source.addEventListener(type, onEvent);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  startCountdowns();
  startCopyButtons();
  const box = document.getElementById("run-live");
  if (box) followRun(box);
});
