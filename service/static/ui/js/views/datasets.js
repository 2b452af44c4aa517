// #/datasets (list + upload) and #/datasets/{id} (counts, rejected files, thumbnails, train, compare).

import { blobURL, getJSON, getPage, postJSON, request, upload } from "../api.js";
import { barChart } from "../charts.js";
import { badge, clear, dropZone, fmtDate, fmtPct, h, toast } from "../dom.js";
import { jobPanel } from "./progress.js";

export async function renderDatasets(root, _params, signal) {
  const datasets = await getJSON("/v1/datasets", { signal });
  root.append(h("h1", {}, "Datasets"), uploadCard(), listCard(datasets));
}

function listCard(datasets) {
  if (!datasets.length) {
    return h("div", { className: "card" }, h("h2", {}, "Your datasets"), h("p", { className: "muted", id: "no-datasets" }, "No datasets yet: upload a zip above."));
  }
  return h("div", { className: "card" }, h("h2", {}, "Your datasets"),
    h("table", { id: "datasets-table" },
      h("thead", {}, h("tr", {}, ["Name", "Status", "Images", "Classes", "Version", "Created"].map((t) => h("th", {}, t)))),
      h("tbody", {}, datasets.map((d) => h("tr", { dataset: { id: d.id } },
        h("td", {}, h("a", { href: `#/datasets/${d.id}` }, d.name)),
        h("td", {}, badge(d.status)),
        h("td", { className: "num" }, d.num_images),
        h("td", { className: "num" }, Object.keys(d.classes || {}).length),
        h("td", { className: "num" }, d.version),
        h("td", { className: "muted" }, fmtDate(d.created_at)))))));
}

function uploadCard() {
  let file = null;
  const name = h("input", { type: "text", id: "dataset-name", name: "name", placeholder: "e.g. flowers", maxLength: 200 });
  const val = h("input", { type: "number", id: "val-fraction", min: 0, max: 0.9, step: 0.05, value: 0.1 });
  const test = h("input", { type: "number", id: "test-fraction", min: 0, max: 0.9, step: 0.05, value: 0.2 });
  const chosen = h("p", { className: "muted", id: "chosen-file" }, "No file chosen");
  const fill = h("div", { style: { width: "0%" } });
  const bar = h("div", { className: "progress", hidden: true }, fill);
  const error = h("p", { className: "error", id: "upload-error" });
  const button = h("button", { type: "submit", id: "upload-button", disabled: true }, "Upload");
  const zone = dropZone({
    id: "dataset-file", accept: ".zip,application/zip", multiple: false,
    text: "Drop a zip here (one folder per class, or a labels.csv of path,label), or click to choose one",
    onFiles: (files) => {
      file = files[0];
      chosen.textContent = `${file.name} (${(file.size / 1e6).toFixed(2)} MB)`;
      if (!name.value.trim()) name.value = file.name.replace(/\.zip$/i, "");
      button.disabled = false;
    },
  });
  const form = h("form", { className: "card", id: "upload-form" },
    h("h2", {}, "Upload a dataset"), zone, chosen,
    h("div", { className: "row" },
      h("label", {}, "Name", name), h("label", {}, "Validation fraction", val), h("label", {}, "Test fraction", test), button),
    bar, error);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!file) return;
    error.textContent = "";
    button.disabled = true;
    bar.hidden = false;
    const body = new FormData();
    body.append("archive", file, file.name);
    body.append("name", name.value.trim() || file.name);
    body.append("val_fraction", val.value);
    body.append("test_fraction", test.value);
    try {
      const created = await upload("/v1/datasets", body, (done, total) => { fill.style.width = `${(100 * done) / total}%`; });
      window.location.hash = `#/datasets/${created.id}`;
    } catch (err) {
      error.textContent = err.message;
      button.disabled = false;
    }
  });
  return form;
}

export async function renderDataset(root, [id], signal) {
  const ds = await getJSON(`/v1/datasets/${encodeURIComponent(id)}`, { signal });
  root.append(
    h("h1", {}, ds.name, " ", badge(ds.status)),
    h("p", { className: "muted" }, h("span", { className: "mono" }, ds.id), ` · version ${ds.version} · created ${fmtDate(ds.created_at)}`),
  );
  if (ds.status === "processing" && ds.job_id) {
    root.append(jobPanel(ds.job_id, signal, {
      title: "Ingestion",
      onDone: () => { if (!signal.aborted) { clear(root); renderDataset(root, [id], signal).catch(() => {}); } },
    }));
    return;
  }
  if (ds.error) root.append(h("div", { className: "card error" }, `${ds.error.code || "error"}: ${ds.error.message || ""}`));
  const splits = ds.splits || {};
  root.append(h("div", { className: "card" }, h("div", { className: "stats", id: "dataset-stats" },
    stat("images", ds.num_images), stat("classes", Object.keys(ds.classes || {}).length),
    stat("train", splits.train ?? 0), stat("val", splits.val ?? 0), stat("test", splits.test ?? 0),
    stat("unlabelled", ds.unlabelled ?? 0),
    stat("rejected", (ds.rejected || []).length), stat("duplicates", (ds.duplicates || []).length))));
  root.append(h("div", { className: "grid2" }, classCard(ds), rejectedCard(ds)));
  if (ds.status === "ready") {
    const backbones = await getJSON("/v1/backbones?limit=500", { signal });
    root.append(h("div", { className: "grid2" }, trainCard(ds, backbones), compareCard(ds, backbones)));
    root.append(await modelsOfDataset(ds, signal));
  }
  const similar = ds.status === "ready" ? await similarityCard(ds, signal) : null;
  if (similar) root.append(similar.card);
  root.append(imagesCard(ds, signal, similar?.showNeighbours));
}

/** A thumbnail of an image of the dataset, fetched with the key. */
function thumb(ds, image, caption, signal) {
  const img = h("img", { alt: image.file, width: 112, height: 96 });
  blobURL(`/v1/datasets/${encodeURIComponent(ds.id)}/images/${image.image_id}/thumbnail?size=128`, signal)
    .then((u) => { img.src = u; signal.addEventListener("abort", () => URL.revokeObjectURL(u)); })
    .catch((err) => { if (err.name !== "AbortError") img.alt = `thumbnail failed: ${err.message}`; });
  return h("figure", { className: "thumb", dataset: { imageId: image.image_id, split: image.split } }, img,
    h("figcaption", { title: image.file }, caption));
}

/** Similar images (pick one in the grid below) and test images that nearly duplicate a training image,
 * from the dataset's latest ready feature set; null when it has none yet. */
async function similarityCard(ds, signal) {
  const sets = (await getJSON("/v1/features?limit=500", { signal })).filter((f) => f.dataset_id === ds.id && f.status === "ready");
  const card = h("div", { className: "card", id: "similarity" }, h("h2", {}, "Similar images and leakage"));
  if (!sets.length) {
    card.append(h("p", { className: "muted" }, "Extract features (or train a linear probe) to search similar images and check the test split for near-duplicates of training images."));
    return { card, showNeighbours: null };
  }
  const fs = sets[sets.length - 1];
  const { pairs, threshold } = await getJSON(`/v1/features/${fs.id}/near-duplicates`, { signal });
  const leaks = h("div", { id: "leaks", dataset: { count: pairs.length } },
    h("p", { className: pairs.length ? "error" : "muted" }, pairs.length
      ? `${pairs.length} test image(s) nearly duplicate a training image (cosine distance ≤ ${threshold}, and nearer than half the next one): they flatter the test metrics.`
      : `No test image nearly duplicates a training image (cosine distance ≤ ${threshold}).`),
    h("div", { className: "thumbs" }, pairs.slice(0, 12).flatMap((p) => [
      thumb(ds, p.test, `test · ${p.test.label}`, signal), thumb(ds, p.train, `train · ${p.train.label} · ${p.distance.toFixed(3)}`, signal)])));
  const similar = h("div", { id: "similar" }, h("p", { className: "muted" }, `Pick an image below to see its nearest images (${fs.backbone} features).`));
  const showNeighbours = async (imageId, file) => {
    clear(similar).append(h("p", { className: "muted" }, `nearest to ${file}…`));
    try {
      const form = new FormData();
      form.append("image_id", imageId);
      form.append("k", "8");
      const { results } = await (await request(`/v1/features/${fs.id}/search`, { method: "POST", body: form, signal })).json();
      clear(similar).append(h("p", {}, "Nearest to ", h("strong", {}, file), ":"),
        h("div", { className: "thumbs" }, results[0].neighbours.map((n) => thumb(ds, n, `${n.label} · ${n.split} · ${n.distance.toFixed(3)}`, signal))));
      similar.scrollIntoView({ block: "nearest" });
    } catch (err) {
      if (err.name !== "AbortError") clear(similar).append(h("p", { className: "error" }, err.message));
    }
  };
  card.append(leaks, similar);
  return { card, showNeighbours };
}

function stat(k, v) {
  return h("div", { className: "stat", dataset: { stat: k } }, h("div", { className: "v" }, v), h("div", { className: "k" }, k));
}

function classCard(ds) {
  const entries = Object.entries(ds.classes || {}).sort((a, b) => b[1] - a[1]);
  const max = Math.max(1, ...entries.map(([, n]) => n));
  return h("div", { className: "card" }, h("h2", {}, "Images per class"),
    h("table", { id: "class-counts" },
      h("thead", {}, h("tr", {}, h("th", {}, "Class"), h("th", { className: "num" }, "Images"), h("th", {}, ""))),
      h("tbody", {}, entries.map(([label, n]) => h("tr", { dataset: { label } },
        h("td", {}, label), h("td", { className: "num" }, n),
        h("td", { style: { width: "45%" } }, h("div", { className: "bar" }, h("span", { className: "track" },
          h("span", { className: "fill", style: { width: `${(100 * n) / max}%`, display: "block" } })))))))));
}

function rejectedCard(ds) {
  const rejected = ds.rejected || [];
  const card = h("div", { className: "card" }, h("h2", {}, `Rejected files (${rejected.length})`));
  if (!rejected.length) {
    card.append(h("p", { className: "muted" }, "Every file was accepted."));
  } else {
    card.append(h("table", { id: "rejected-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "File"), h("th", {}, "Reason"))),
      h("tbody", {}, rejected.map((r) => h("tr", {}, h("td", { className: "mono" }, r.file), h("td", {}, r.reason))))));
  }
  const dups = ds.duplicates || [];
  if (dups.length) {
    card.append(h("p", { className: "muted" }, `${dups.length} duplicate file(s) stored once: `,
      dups.slice(0, 5).map((d) => d.file).join(", "), dups.length > 5 ? "…" : ""));
  }
  return card;
}

function backboneSelect(backbones, id) {
  const usable = backbones.filter((b) => b.pretrained !== false && !String(b.name).startsWith("model:"));
  const list = usable.length ? usable : backbones;
  return h("select", { id }, list.map((b) => h("option", { value: b.name }, `${b.name} (${b.feature_dim}-d)`)));
}

function trainCard(ds, backbones) {
  const backbone = backboneSelect(backbones, "train-backbone");
  const strategy = h("select", { id: "train-strategy" },
    h("option", { value: "linear_probe" }, "linear probe on cached features"),
    h("option", { value: "finetune" }, "fine-tune the network"));
  const headType = h("select", { id: "train-head" }, ["logistic", "linear_svm", "ridge", "sgd"].map((t) => h("option", { value: t }, t)));
  const epochs = h("input", { type: "number", id: "train-epochs", min: 1, max: 200, value: 5 });
  const epochsLabel = h("label", { hidden: true }, "Epochs", epochs);
  strategy.addEventListener("change", () => { epochsLabel.hidden = strategy.value !== "finetune"; });
  const error = h("p", { className: "error" });
  const button = h("button", { type: "submit", id: "train-button" }, "Train");
  const form = h("form", { className: "card", id: "train-form" }, h("h2", {}, "Train a model"),
    h("label", {}, "Backbone", backbone), h("label", {}, "Strategy", strategy),
    h("label", {}, "Head", headType), epochsLabel, error, button);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    button.disabled = true;
    const body = { dataset_id: ds.id, backbone: backbone.value, strategy: strategy.value, head: { type: headType.value } };
    if (strategy.value === "finetune") body.finetune = { epochs: Number(epochs.value) };
    try {
      const created = await postJSON("/v1/models", body);
      window.location.hash = `#/jobs/${created.job_id}`;
    } catch (err) {
      error.textContent = err.message;
      button.disabled = false;
    }
  });
  return form;
}

function compareCard(ds, backbones) {
  const usable = backbones.filter((b) => b.pretrained !== false && !String(b.name).startsWith("model:"));
  const boxes = usable.map((b, i) => h("label", {}, h("input", { type: "checkbox", value: b.name, checked: i < 2, name: "compare-backbone" }), b.name));
  const error = h("p", { className: "error" });
  const button = h("button", { type: "submit", className: "secondary", id: "compare-button" }, "Compare");
  const form = h("form", { className: "card", id: "compare-form" }, h("h2", {}, "Compare backbones"),
    h("p", { className: "muted" }, "A linear probe per backbone on the same splits, ranked by test accuracy."),
    h("div", { className: "checks" }, boxes), error, button);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const chosen = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    if (!chosen.length) { error.textContent = "Choose at least one backbone."; return; }
    button.disabled = true;
    try {
      const job = await postJSON("/v1/compare", { dataset_id: ds.id, backbones: chosen });
      window.location.hash = `#/jobs/${job.job_id}`;
    } catch (err) {
      error.textContent = err.message;
      button.disabled = false;
    }
  });
  return form;
}

async function modelsOfDataset(ds, signal) {
  const models = (await getJSON("/v1/models", { signal })).filter((m) => m.dataset_id === ds.id);
  const card = h("div", { className: "card" }, h("h2", {}, "Models trained on this dataset"));
  if (!models.length) {
    card.append(h("p", { className: "muted" }, "None yet."));
    return card;
  }
  const ready = models.filter((m) => m.status === "ready" && m.metrics && m.metrics.accuracy !== undefined);
  if (ready.length > 1) {
    card.append(barChart(ready.map((m) => ({ name: `${m.backbone} · ${m.strategy === "finetune" ? "fine-tune" : "probe"}`, value: m.metrics.accuracy }))
      .sort((a, b) => b.value - a.value), { id: "dataset-models-chart", title: "test accuracy" }));
  }
  card.append(h("table", {}, h("tbody", {}, models.map((m) => h("tr", {},
    h("td", {}, h("a", { href: `#/models/${m.id}`, className: "mono" }, m.id)), h("td", {}, m.backbone), h("td", {}, m.strategy),
    h("td", {}, badge(m.status)), h("td", { className: "num" }, fmtPct(m.metrics?.accuracy)))))));
  return card;
}

function imagesCard(ds, signal, onPick) {
  const grid = h("div", { className: "thumbs", id: "thumbnails" });
  const more = h("button", { type: "button", className: "secondary", id: "more-images", hidden: true }, "Load more");
  const split = h("select", { id: "image-split" }, ["", "train", "val", "test", "pool"].map((v) => h("option", { value: v }, v === "pool" ? "unlabelled" : v || "all splits")));
  const label = h("select", { id: "image-label" }, ["", ...Object.keys(ds.classes || {}).sort()].map((v) => h("option", { value: v }, v || "all classes")));
  const urls = [];
  signal.addEventListener("abort", () => urls.forEach((u) => URL.revokeObjectURL(u)));
  let next = null;
  const queue = [];
  let active = 0;
  const pump = () => {
    while (active < 6 && queue.length && !signal.aborted) {
      const [img, path] = queue.shift();
      active++;
      blobURL(path, signal).then((u) => { urls.push(u); img.src = u; }).catch((err) => {
        if (err.name !== "AbortError") img.alt = `thumbnail failed: ${err.message}`;
      }).finally(() => { active--; pump(); });
    }
  };
  const load = async (url) => {
    more.disabled = true;
    try {
      const page = await getPage(url, { signal });
      for (const item of page.items) {
        const img = h("img", { alt: item.file, width: 112, height: 96 });
        const figure = h("figure", { className: "thumb", dataset: { imageId: item.id, split: item.split } }, img,
          h("figcaption", { title: `${item.file} · ${item.split}` }, `${item.label} · ${item.split}`));
        if (onPick) {
          figure.classList.add("pickable");
          figure.addEventListener("click", () => onPick(item.id, item.file));
        }
        grid.append(figure);
        queue.push([img, `/v1/datasets/${encodeURIComponent(ds.id)}/images/${item.id}/thumbnail?size=128`]);
      }
      pump();
      next = page.next;
      more.hidden = !next;
    } catch (err) {
      if (err.name !== "AbortError") toast(err.message);
    } finally {
      more.disabled = false;
    }
  };
  const reload = () => {
    clear(grid);
    queue.length = 0;
    const params = new URLSearchParams({ limit: "48" });
    if (split.value) params.set("split", split.value);
    if (label.value) params.set("label", label.value);
    load(`/v1/datasets/${encodeURIComponent(ds.id)}/images?${params}`);
  };
  more.addEventListener("click", () => next && load(next));
  split.addEventListener("change", reload);
  label.addEventListener("change", reload);
  if (ds.num_images) reload();
  return h("div", { className: "card" }, h("div", { className: "row" }, h("h2", {}, "Images"), split, label), grid, h("p", {}, more));
}
