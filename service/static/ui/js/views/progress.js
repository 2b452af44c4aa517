// A live job panel shared by the pages that wait on a job: stage, done/total bar, status, cancel.

import { followJob, isTerminal, request } from "../api.js";
import { badge, clear, h, toast } from "../dom.js";

function seconds(job) {
  if (!job.started_at || !job.finished_at) return null;
  return (new Date(job.finished_at) - new Date(job.started_at)) / 1000;
}

export function progressText(job) {
  if (isTerminal(job.status)) {
    const took = seconds(job);
    return `${job.status}${took === null ? "" : ` in ${took.toFixed(1)} s`}${job.attempts > 1 ? ` after ${job.attempts} attempts` : ""}`;
  }
  const p = job.progress || {};
  if (!p.stage) return job.status === "queued" ? "waiting for a worker" : "";
  return p.total ? `${p.stage}: ${p.done ?? 0} / ${p.total}` : p.stage;
}

export function progressFraction(job) {
  if (job.status === "succeeded") return 1;
  const p = job.progress || {};
  return p.total ? Math.min(1, (p.done || 0) / p.total) : 0;
}

/** A card that follows the job over SSE; onDone(job) runs once it ends. Returns the card element. */
export function jobPanel(jobId, signal, { onUpdate, onDone, title = "Job" } = {}) {
  const status = h("span", {});
  const text = h("span", { className: "muted job-progress-text" });
  const fill = h("div", { style: { width: "0%" } });
  const bar = h("div", { className: "progress", role: "progressbar" }, fill);
  const cancel = h("button", { type: "button", className: "danger", id: "cancel-job" }, "Cancel");
  const error = h("p", { className: "error job-error" });
  const card = h("div", { className: "card job-panel", dataset: { jobId } },
    h("div", { className: "job-head" }, h("h2", {}, title, " ", h("a", { href: `#/jobs/${jobId}`, className: "mono" }, jobId)), status),
    bar,
    h("p", {}, text),
    error,
    cancel);
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await request(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
      toast("Cancellation requested");
    } catch (err) {
      toast(err.message);
      cancel.disabled = false;
    }
  });
  const show = (job) => {
    clear(status).append(badge(job.status));
    card.dataset.status = job.status;
    text.textContent = progressText(job);
    fill.style.width = `${(100 * progressFraction(job)).toFixed(1)}%`;
    bar.classList.toggle("ended", job.status === "failed" || job.status === "cancelled");
    cancel.hidden = isTerminal(job.status);
    error.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
    if (onUpdate) onUpdate(job);
  };
  followJob(jobId, show, signal).then((job) => {
    if (job && onDone && !signal.aborted) onDone(job);
  }).catch((err) => {
    if (err.name !== "AbortError" && !signal.aborted) error.textContent = err.message;
  });
  return card;
}
