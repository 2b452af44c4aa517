// #/models (list, aliases, leaderboards) and #/models/{id} (metrics, confusion heat map, curves, try a
// prediction, publish under an alias, label the unlabelled images a linear probe ranks first).

import { getJSON, isTerminal, postJSON, request } from "../api.js";
import { confusionHeatmap, scoreBar } from "../charts.js";
import { badge, clear, dropZone, fmtDate, fmtNum, fmtPct, h } from "../dom.js";
import { historyCharts, leaderboard } from "./job.js";
import { jobPanel } from "./progress.js";

export async function renderModels(root, _params, signal) {
  const [models, jobs, aliases] = await Promise.all([
    getJSON("/v1/models", { signal }), getJSON("/v1/jobs", { signal }), getJSON("/v1/aliases", { signal })]);
  root.append(h("h1", {}, "Models"));
  const card = h("div", { className: "card" }, h("h2", {}, "Your models"));
  if (!models.length) {
    card.append(h("p", { className: "muted" }, "No models yet: open a dataset and train one."));
  } else {
    card.append(h("table", { id: "models-table" },
      h("thead", {}, h("tr", {}, ["Model", "Backbone", "Strategy", "Dataset", "Status", "Accuracy", "Macro-F1", "Created"]
        .map((t, i) => h("th", { className: i === 5 || i === 6 ? "num" : "" }, t)))),
      h("tbody", {}, models.map((m) => h("tr", { dataset: { id: m.id } },
        h("td", {}, h("a", { href: `#/models/${m.id}`, className: "mono" }, m.id)),
        h("td", {}, m.backbone), h("td", {}, m.strategy),
        h("td", {}, h("a", { href: `#/datasets/${m.dataset_id}`, className: "mono" }, m.dataset_id)),
        h("td", {}, badge(m.status)),
        h("td", { className: "num" }, fmtPct(m.metrics?.accuracy)),
        h("td", { className: "num" }, fmtNum(m.metrics?.macro_f1)),
        h("td", { className: "muted" }, fmtDate(m.created_at)))))));
  }
  root.append(card, aliasesCard(aliases));
  const compares = jobs.filter((j) => j.kind === "compare" && j.status === "succeeded" && j.metrics?.leaderboard);
  const boards = h("div", { className: "card", id: "leaderboards" }, h("h2", {}, "Backbone comparisons"));
  if (!compares.length) {
    boards.append(h("p", { className: "muted" }, "No comparison yet: open a dataset and compare backbones."));
  } else {
    const holder = h("div", {});
    const pick = h("select", { id: "compare-select" }, compares.map((j, i) =>
      h("option", { value: i }, `${fmtDate(j.finished_at)} · ${j.metrics.leaderboard.length} backbones · ${j.resource?.id ?? ""}`)));
    const show = () => clear(holder).append(leaderboard(compares[Number(pick.value)].metrics.leaderboard));
    pick.addEventListener("change", show);
    boards.append(pick, holder);
    show();
  }
  root.append(boards);
}

function aliasesCard(aliases) {
  const card = h("div", { className: "card", id: "aliases" }, h("h2", {}, "Aliases"));
  if (!aliases.length) {
    card.append(h("p", { className: "muted" }, "No aliases yet: open a model and publish it under a name that applications call."));
    return card;
  }
  card.append(h("table", { id: "aliases-table" },
    h("thead", {}, h("tr", {}, ["Alias", "Model", "Prediction URL", "Updated"].map((t) => h("th", {}, t)))),
    h("tbody", {}, aliases.map((a) => h("tr", { dataset: { alias: a.name, model: a.model_id } },
      h("td", {}, h("strong", {}, a.name)),
      h("td", {}, h("a", { href: `#/models/${a.model_id}`, className: "mono" }, a.model_id)),
      h("td", { className: "mono" }, `POST /v1/aliases/${a.name}/predict`),
      h("td", { className: "muted" }, fmtDate(a.updated_at)))))));
  return card;
}

/** Publish the model under an alias, or repoint an existing alias to it: applications keep their URL. */
function aliasCard(model, aliases) {
  const mine = aliases.filter((a) => a.model_id === model.id);
  const others = aliases.filter((a) => a.model_id !== model.id);
  const status = h("p", { id: "model-aliases" });
  const show = () => clear(status).append(...(mine.length
    ? ["Served as ", ...mine.flatMap((a, i) => [i ? ", " : "", h("strong", { className: "alias" }, a.name)])]
    : [h("span", { className: "muted" }, "Not published under an alias.")]));
  show();
  const name = h("input", {
    type: "text", id: "alias-name", placeholder: "e.g. production", maxLength: 64, list: "alias-names", required: true,
    pattern: "[a-z0-9][a-z0-9._\\-]{0,63}", title: "lower-case letters, digits, '.', '_' or '-', starting with a letter or digit",
  });
  const known = h("datalist", { id: "alias-names" }, others.map((a) => h("option", { value: a.name })));
  const error = h("p", { className: "error" });
  const button = h("button", { type: "submit", id: "alias-button" }, "Publish");
  const form = h("form", { className: "card", id: "alias-form" }, h("h2", {}, "Alias"), status,
    h("label", {}, "Name (a new one, or an existing alias to repoint here)", name, known), error, button);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    button.disabled = true;
    try {
      const alias = name.value.trim();
      await request(`/v1/aliases/${encodeURIComponent(alias)}`, { method: "PUT", json: { model_id: model.id } });
      if (!mine.some((a) => a.name === alias)) mine.push({ name: alias, model_id: model.id });
      show();
      name.value = "";
    } catch (err) {
      error.textContent = err.message;
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function stat(k, v, id) {
  return h("div", { className: "stat", id }, h("div", { className: "v" }, v), h("div", { className: "k" }, k));
}

export async function renderModel(root, [id], signal) {
  const model = await getJSON(`/v1/models/${encodeURIComponent(id)}`, { signal });
  root.append(
    h("h1", {}, `${model.backbone} · ${model.strategy === "finetune" ? "fine-tuned" : "linear probe"} `, badge(model.status)),
    h("p", { className: "muted" }, h("span", { className: "mono" }, model.id), " · dataset ",
      h("a", { href: `#/datasets/${model.dataset_id}`, className: "mono" }, model.dataset_id),
      ` · created ${fmtDate(model.created_at)}`));
  if (model.status !== "ready") {
    if (model.job_id && !isTerminal(model.status)) {
      root.append(jobPanel(model.job_id, signal, {
        title: "Training",
        onDone: () => { if (!signal.aborted) { clear(root); renderModel(root, [id], signal).catch(() => {}); } },
      }));
    } else {
      root.append(h("div", { className: "card" }, h("p", {}, `This model is ${model.status}; see its job `,
        h("a", { href: `#/jobs/${model.job_id}` }, model.job_id), ".")));
    }
    return;
  }
  const m = model.metrics || {};
  root.append(h("div", { className: "card" }, h("div", { className: "stats" },
    stat("test accuracy", fmtPct(m.accuracy), "model-accuracy"), stat("macro-F1", fmtNum(m.macro_f1), "model-macro-f1"),
    stat("train accuracy", fmtPct(m.train_accuracy)), stat("val accuracy", fmtPct(m.val_accuracy)),
    stat("classes", (model.labels || []).length))));
  const aliases = await getJSON("/v1/aliases", { signal });
  root.append(predictCard(model), aliasCard(model, aliases));
  if (model.strategy === "linear_probe") root.append(suggestionsCard(model, signal));
  const labels = m.labels || model.labels || [];
  if (m.confusion_matrix) {
    root.append(h("div", { className: "grid2" },
      h("div", { className: "card" }, h("h2", {}, "Confusion matrix (test split)"), confusionHeatmap(labels, m.confusion_matrix)),
      perClassCard(labels, m.per_class || {})));
  }
  if (model.strategy === "finetune" && model.job_id) {
    const job = await getJSON(`/v1/jobs/${encodeURIComponent(model.job_id)}`, { signal });
    const history = job.metrics?.history || [];
    if (history.length) root.append(h("div", { className: "card" }, h("h2", {}, "Training curves"), historyCharts(history)));
  }
  root.append(lineageCard(model), exportCard(model, signal));
}

function perClassCard(labels, perClass) {
  return h("div", { className: "card" }, h("h2", {}, "Per class"),
    h("table", { id: "per-class" },
      h("thead", {}, h("tr", {}, ["Class", "Precision", "Recall", "F1", "Support"].map((t, i) => h("th", { className: i ? "num" : "" }, t)))),
      h("tbody", {}, labels.map((label) => {
        const r = perClass[label] || {};
        return h("tr", { dataset: { label } }, h("td", {}, label), h("td", { className: "num" }, fmtNum(r.precision)),
          h("td", { className: "num" }, fmtNum(r.recall)), h("td", { className: "num" }, fmtNum(r.f1)), h("td", { className: "num" }, r.support ?? "–"));
      }))));
}

function lineageCard(model) {
  const rows = [
    ["backbone", model.backbone], ["strategy", model.strategy],
    ["dataset version", model.lineage?.dataset_version ?? model.lineage?.version ?? "–"],
    ["weights", model.lineage?.weights_digest ? String(model.lineage.weights_digest).slice(0, 16) : "–"],
    ["head", model.params?.head ? JSON.stringify(model.params.head) : "–"],
  ];
  if (model.strategy === "finetune" && model.params?.finetune) rows.push(["fine-tune", JSON.stringify(model.params.finetune)]);
  return h("div", { className: "card" }, h("h2", {}, "Lineage"),
    h("table", { className: "kv", id: "lineage" }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", { className: "mono" }, v))))));
}

/** Download the model as one ONNX graph (fetched with the key, saved from a blob URL). */
function exportCard(model, signal) {
  const status = h("p", { className: "muted", id: "export-status" },
    "One self-contained ONNX graph: uint8 images in, class probabilities out; class names and preprocessing in its metadata. ",
    h("span", { className: "mono" }, "scripts/predict_onnx.py"), " runs it with numpy, Pillow and onnxruntime alone.");
  const button = h("button", { type: "button", id: "export-button", className: "secondary" }, "Download ONNX");
  button.addEventListener("click", async () => {
    button.disabled = true;
    status.textContent = "exporting…";
    try {
      const resp = await request(`/v1/models/${encodeURIComponent(model.id)}/export?format=onnx`, { signal });
      const blob = await resp.blob();
      const url = URL.createObjectURL(blob);
      const link = h("a", { href: url, download: `${model.id}.onnx`, id: "export-link", dataset: { bytes: blob.size } }, `${model.id}.onnx`);
      clear(status).append("Saved ", link, ` (${(blob.size / 1e6).toFixed(1)} MB).`);
      link.click();
    } catch (err) {
      status.textContent = err.message;
      status.className = "error";
    } finally {
      button.disabled = false;
    }
  });
  return h("div", { className: "card", id: "export" }, h("h2", {}, "Export"), status, button);
}

// The unlabelled images to label next (GET /v1/models/{id}/suggestions); labels typed here make a new dataset
// version (POST /v1/datasets/{id}/labels), followed as a job.
function suggestionsCard(model, signal) {
  const strategy = h("select", { id: "suggest-strategy" }, ["margin", "entropy", "coreset"].map((v) => h("option", { value: v }, v)));
  const body = h("tbody", { id: "suggestion-rows" });
  const note = h("p", { className: "muted", id: "suggest-note" });
  const error = h("p", { className: "error", id: "suggest-error" });
  const button = h("button", { type: "submit", id: "label-button" }, "Label and make a new version");
  const done = h("div", { id: "label-job" });
  const load = async () => {
    error.textContent = "";
    clear(body);
    try {
      const r = await getJSON(`/v1/models/${encodeURIComponent(model.id)}/suggestions?k=20&strategy=${strategy.value}`, { signal });
      note.textContent = r.pool_size
        ? `${r.suggestions.length} of ${r.pool_size} unlabelled images of dataset version ${r.dataset_version}, best first.`
        : "The dataset has no unlabelled images: put some in a folder _unlabelled/ of the zip, or add images without labels.";
      button.hidden = !r.suggestions.length;
      body.append(...r.suggestions.map((sg) => h("tr", { dataset: { imageId: sg.image_id } },
        h("td", { className: "mono" }, sg.file), h("td", {}, sg.label), h("td", { className: "num" }, fmtPct(sg.score)),
        h("td", { className: "num" }, fmtNum(sg.value, 4)),
        h("td", {}, h("input", { type: "text", className: "new-label", list: "suggest-classes", maxLength: 100, placeholder: sg.label, "aria-label": `label for ${sg.file}` })))));
    } catch (err) {
      if (!signal.aborted) error.textContent = err.message;
    }
  };
  strategy.addEventListener("change", load);
  const form = h("form", { className: "card", id: "suggestions" }, h("h2", {}, "Label next"),
    h("label", {}, "Ranking ", strategy), note,
    h("datalist", { id: "suggest-classes" }, (model.labels || []).map((l) => h("option", { value: l }))),
    h("table", {}, h("thead", {}, h("tr", {}, ["file", "predicted", "score", "value", "label"].map((c) => h("th", {}, c)))), body),
    error, button, done);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    const labels = {};
    body.querySelectorAll("tr").forEach((tr) => {
      const value = tr.querySelector("input.new-label").value.trim();
      if (value) labels[tr.dataset.imageId] = value;
    });
    if (!Object.keys(labels).length) { error.textContent = "Type a label for at least one image."; return; }
    button.disabled = true;
    try {
      const accepted = await postJSON(`/v1/datasets/${encodeURIComponent(model.dataset_id)}/labels`, { labels });
      clear(done).append(jobPanel(accepted.job_id, signal, {
        title: `Version ${accepted.version}`,
        onDone: (job) => { if (job.status === "succeeded" && !signal.aborted) clear(done).append(h("p", { id: "label-done" }, `Version ${accepted.version} is made: `, h("a", { href: `#/datasets/${model.dataset_id}` }, "train a new probe on it"), ".")); },
      }));
    } catch (err) {
      error.textContent = err.message;
    } finally {
      button.disabled = false;
    }
  });
  load();
  return form;
}

function predictCard(model) {
  const results = h("div", { id: "predictions" });
  const error = h("p", { className: "error" });
  const previews = [];
  const run = async (files) => {
    error.textContent = "";
    previews.splice(0).forEach((u) => URL.revokeObjectURL(u));
    clear(results);
    const rows = files.map((f) => {
      const url = URL.createObjectURL(f);
      previews.push(url);
      const body = h("div", {}, h("div", { className: "file" }, f.name), h("div", { className: "label muted" }, "predicting…"));
      const row = h("div", { className: "prediction", dataset: { file: f.name } }, h("img", { src: url, alt: "", onerror: (e) => { e.target.style.visibility = "hidden"; } }), body);
      results.append(row);
      return [row, body];
    });
    const form = new FormData();
    files.forEach((f) => form.append("files", f, f.name));
    form.append("top_k", String(Math.min(5, (model.labels || []).length || 1)));
    try {
      const resp = await request(`/v1/models/${encodeURIComponent(model.id)}/predict`, { method: "POST", body: form });
      const { predictions } = await resp.json();
      predictions.forEach((p, i) => {
        const [row, body] = rows[i] || [];
        if (!row) return;
        clear(body).append(h("div", { className: "file" }, p.file ?? files[i].name));
        if (p.error) {
          row.dataset.error = "1";
          body.append(h("div", { className: "error" }, p.error.message || String(p.error)));
          return;
        }
        row.dataset.label = p.label;
        body.append(h("div", { className: "label" }, h("strong", { className: "predicted-label" }, p.label), ` ${(100 * p.score).toFixed(1)}%`),
          h("div", { className: "scores" }, (p.top_k || [{ label: p.label, score: p.score }]).map((t) => scoreBar(t.label, t.score))));
      });
    } catch (err) {
      error.textContent = err.message;
      rows.forEach(([, body]) => { body.lastChild.textContent = ""; });
    }
  };
  return h("div", { className: "card", id: "try-prediction" }, h("h2", {}, "Try a prediction"),
    dropZone({ id: "predict-files", accept: "image/*", multiple: true, text: "Drop images here, or click to choose some", onFiles: run }),
    error, results);
}
