// The console's entry point: sign-in gate and hash routes. Each view gets an AbortSignal that fires
// when the user navigates away, which closes its event streams and pending requests.

import { auth, ApiError } from "./api.js";
import { clear, h, toast } from "./dom.js";
import { renderSignIn } from "./views/signin.js";
import { renderDatasets, renderDataset } from "./views/datasets.js";
import { renderModels, renderModel } from "./views/models.js";
import { renderJob } from "./views/job.js";

const ROUTES = [
  [/^#\/datasets\/?$/, renderDatasets, "datasets"],
  [/^#\/datasets\/([^/]+)$/, renderDataset, "datasets"],
  [/^#\/models\/?$/, renderModels, "models"],
  [/^#\/models\/([^/]+)$/, renderModel, "models"],
  [/^#\/jobs\/([^/]+)$/, renderJob, null],
];

let current = null;

function isAbort(err) {
  return err && (err.name === "AbortError" || err.name === "TimeoutError");
}

async function route() {
  if (current) current.abort();
  current = new AbortController();
  const { signal } = current;
  const root = clear(document.getElementById("app"));
  const nav = document.getElementById("nav");
  if (!auth.key) {
    nav.hidden = true;
    renderSignIn(root);
    return;
  }
  nav.hidden = false;
  const hash = window.location.hash || "#/datasets";
  for (const [pattern, view, section] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    nav.querySelectorAll("a").forEach((a) => a.classList.toggle("active", a.dataset.nav === section));
    try {
      await view(root, match.slice(1).map(decodeURIComponent), signal);
    } catch (err) {
      if (isAbort(err) || signal.aborted) return;
      console.warn(err);
      clear(root).append(h("div", { className: "card" },
        h("h1", {}, err instanceof ApiError && err.status === 404 ? "Not found" : "Something went wrong"),
        h("p", { className: "error" }, err.message)));
    }
    return;
  }
  window.location.hash = "#/datasets";
}

window.addEventListener("hashchange", route);
window.addEventListener("tlserve:unauthorized", () => {
  auth.clear();
  toast("The API key was refused; sign in again.");
  route();
});
window.addEventListener("unhandledrejection", (e) => {
  if (isAbort(e.reason)) { e.preventDefault(); return; }
  if (e.reason instanceof ApiError) { e.preventDefault(); toast(e.reason.message); }
});
document.getElementById("sign-out").addEventListener("click", () => {
  auth.clear();
  window.location.hash = "#/datasets";
  route();
});
window.addEventListener("tlserve:signed-in", route);

route();
