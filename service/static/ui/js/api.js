// Talking to the tlserve API. The key lives in sessionStorage and travels only in the Authorization
// header: never in a URL, so event streams are read with fetch and images are shown through blob URLs.

const KEY = "tlserve.apiKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const auth = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

function headers(extra) {
  const out = new Headers(extra || {});
  if (auth.key) out.set("Authorization", `Bearer ${auth.key}`);
  return out;
}

async function failure(resp, notify = true) {
  let code = "http_error";
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (body && body.error) ({ code, message } = body.error);
    else if (body && body.detail) message = JSON.stringify(body.detail);
  } catch { /* not JSON */ }
  if (resp.status === 401 && notify) window.dispatchEvent(new CustomEvent("tlserve:unauthorized"));
  return new ApiError(resp.status, code, message);
}

/** fetch() with the key; throws ApiError for a non-2xx answer. */
export async function request(path, { method = "GET", body, json, signal, key } = {}) {
  const init = { method, headers: headers(), signal };
  if (key) init.headers.set("Authorization", `Bearer ${key}`);
  if (json !== undefined) {
    init.headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  const resp = await fetch(path, init);
  if (!resp.ok) throw await failure(resp, !key);
  return resp;
}

export async function getJSON(path, opts) {
  return (await request(path, opts)).json();
}

export async function postJSON(path, json) {
  return (await request(path, { method: "POST", json })).json();
}

/** Check a key by listing datasets with it. */
export async function verifyKey(key) {
  await request("/v1/datasets", { key });
}

/** The URL after rel="next" in an RFC 8288 Link header, or null. */
export function nextLink(resp) {
  const link = resp.headers.get("Link");
  if (!link) return null;
  for (const part of link.split(",")) {
    const m = part.match(/<([^>]+)>\s*;\s*rel="?next"?/);
    if (m) return m[1];
  }
  return null;
}

/** One page of a paginated list: {items, next}. */
export async function getPage(url, opts) {
  const resp = await request(url, opts);
  return { items: await resp.json(), next: nextLink(resp) };
}

/** POST a multipart form with upload progress (fetch cannot report it; XMLHttpRequest can). */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Authorization", `Bearer ${auth.key}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolve(xhr.response);
      const err = (xhr.response && xhr.response.error) || {};
      if (xhr.status === 401) window.dispatchEvent(new CustomEvent("tlserve:unauthorized"));
      reject(new ApiError(xhr.status, err.code || "http_error", err.message || `upload failed (${xhr.status})`));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "network", "the upload did not reach the server")));
    xhr.send(form);
  });
}

/** Read a server-sent event stream with fetch (so the key stays in a header); calls onEvent(name, data). */
export async function streamEvents(path, onEvent, signal) {
  const resp = await request(path, { signal });
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const [field, ...rest] = line.split(":");
        const val = rest.join(":").replace(/^ /, "");
        if (field === "event") name = val;
        else if (field === "data") data.push(val);
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/**
 * Follow a job until it ends, calling onUpdate(job) for each change; reconnects if the stream drops.
 * Resolves with the final job; abort with the signal.
 */
export async function followJob(jobId, onUpdate, signal) {
  let last = null;
  for (let attempt = 0; attempt < 20 && !signal?.aborted; attempt++) {
    try {
      await streamEvents(`/v1/jobs/${encodeURIComponent(jobId)}/events`, (name, job) => {
        if (name !== "job") return;
        last = job;
        onUpdate(job);
      }, signal);
    } catch (err) {
      if (signal?.aborted || err instanceof ApiError) throw err;
    }
    if (last && TERMINAL.has(last.status)) return last;
    await new Promise((r) => setTimeout(r, Math.min(500 * 2 ** attempt, 5000)));
  }
  return last;
}

export function isTerminal(status) {
  return TERMINAL.has(status);
}

/** An <img> source for an API image: fetched with the key, shown as a blob URL (revoked on release). */
export async function blobURL(path, signal) {
  const resp = await request(path, { signal });
  return URL.createObjectURL(await resp.blob());
}
