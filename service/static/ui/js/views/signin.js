import { auth, verifyKey, ApiError } from "../api.js";
import { h } from "../dom.js";

export function renderSignIn(root) {
  const input = h("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off", required: true, placeholder: "tls_…" });
  const error = h("p", { className: "error", id: "signin-error" });
  const button = h("button", { type: "submit", id: "sign-in" }, "Sign in");
  const form = h("form", { className: "card signin", id: "signin-form" },
    h("h1", {}, "Sign in"),
    h("p", { className: "muted" }, "Paste an API key made with ", h("code", {}, "tlserve keys create --tenant NAME"), ". It is kept in this tab only."),
    h("label", { htmlFor: "api-key" }, "API key", input),
    error,
    button);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    error.textContent = "";
    try {
      await verifyKey(key);
      auth.set(key);
      if (!window.location.hash || window.location.hash === "#/") window.location.hash = "#/datasets";
      window.dispatchEvent(new CustomEvent("tlserve:signed-in"));
    } catch (err) {
      error.textContent = err instanceof ApiError && err.status === 401 ? "That API key was not accepted." : err.message;
      button.disabled = false;
    }
  });
  root.append(form);
  input.focus();
}
