// #/jobs/{id}: live progress over SSE, cancel, and what the job produced (model, dataset, curves, leaderboard).

import { getJSON, isTerminal } from "../api.js";
import { barChart, lineChart } from "../charts.js";
import { clear, fmtDate, h } from "../dom.js";
import { jobPanel } from "./progress.js";

const KIND_NAMES = {
  ingest: "Dataset ingestion", extract: "Feature extraction", fit: "Linear probe training", finetune: "Fine-tuning",
  compare: "Backbone comparison", predict_batch: "Batch prediction",
};

export function resourceLink(job) {
  const r = job.resource;
  if (!r) return null;
  if (r.type === "model") return h("a", { href: `#/models/${r.id}`, id: "job-resource" }, `Open model ${r.id}`);
  if (r.type === "dataset") return h("a", { href: `#/datasets/${r.id}`, id: "job-resource" }, `Open dataset ${r.id}`);
  return h("span", { className: "mono" }, `${r.type} ${r.id}`);
}

export function historyCharts(history) {
  const pts = (key) => history.map((r) => [r.epoch, r[key] ?? null]);
  return h("div", { className: "grid2", id: "training-curves" },
    lineChart([
      { name: "train loss", color: "#2f6fdf", points: pts("train_loss") },
      { name: "val loss", color: "#d9822b", points: pts("val_loss") },
    ], { title: "loss", id: "loss-curve" }),
    lineChart([
      { name: "train accuracy", color: "#2f6fdf", points: pts("train_acc") },
      { name: "val accuracy", color: "#d9822b", points: pts("val_acc") },
    ], { title: "accuracy", id: "accuracy-curve", yMin: 0, yMax: 1 }));
}

export function leaderboard(board) {
  return barChart(board.map((r) => ({
    name: r.backbone, value: r.test_accuracy,
    note: `F1 ${r.macro_f1 === null || r.macro_f1 === undefined ? "–" : r.macro_f1.toFixed(3)} · ${r.extraction_seconds ?? "?"} s${r.features_from_cache ? " (cached)" : ""}`,
  })), { id: "leaderboard-chart", title: "test accuracy by backbone" });
}

/** The job's scalar results (accuracy, timings, counts) as a table; lists and tables are drawn elsewhere. */
function summaryCard(job) {
  const rows = Object.entries(job.metrics || {}).filter(([, v]) => v === null || ["number", "string", "boolean"].includes(typeof v));
  return h("div", { className: "card" }, h("h2", {}, "Result"),
    h("table", { className: "kv", id: "job-summary" }, h("tbody", {},
      h("tr", {}, h("th", {}, "started"), h("td", {}, fmtDate(job.started_at))),
      h("tr", {}, h("th", {}, "finished"), h("td", {}, fmtDate(job.finished_at))),
      h("tr", {}, h("th", {}, "attempts"), h("td", {}, `${job.attempts} of ${job.max_attempts}`)),
      rows.map(([k, v]) => h("tr", {}, h("th", {}, k.replaceAll("_", " ")),
        h("td", { className: "mono" }, typeof v === "number" && !Number.isInteger(v) ? v.toFixed(4) : String(v)))))));
}

export async function renderJob(root, [id], signal) {
  const job = await getJSON(`/v1/jobs/${encodeURIComponent(id)}`, { signal });
  const link = h("p", {});
  const details = h("div", {});
  const summary = h("div", {});
  root.append(h("h1", {}, KIND_NAMES[job.kind] || job.kind),
    h("p", { className: "muted" }, `created ${fmtDate(job.created_at)} · queue ${job.queue}`));
  let lastHistory = -1;
  let shownBoard = false;
  const update = (j) => {
    clear(link).append(resourceLink(j) || "");
    const history = (j.metrics && j.metrics.history) || [];
    if (history.length && history.length !== lastHistory) {
      lastHistory = history.length;
      clear(details).append(h("div", { className: "card" }, h("h2", {}, "Training curves"), historyCharts(history)));
    }
    if (j.metrics && j.metrics.leaderboard && !shownBoard) {
      shownBoard = true;
      details.append(h("div", { className: "card" }, h("h2", {}, "Leaderboard"), leaderboard(j.metrics.leaderboard)));
    }
    if (isTerminal(j.status) && !summary.firstChild) summary.append(summaryCard(j));
  };
  root.append(jobPanel(id, signal, { title: "Progress", onUpdate: update }), link, summary, details);
}
