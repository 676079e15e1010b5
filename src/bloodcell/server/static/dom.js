// Small DOM and HTTP helpers shared by the page's modules.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

export const $ = id => document.getElementById(id);

export function failureMessage(response, body) {
  let message = (body && typeof body.detail === "string" && body.detail)
    || `Request failed (${response.status} ${response.statusText}).`;
  const retry = response.headers.get("Retry-After");
  if (response.status === 503 && retry && !/retry/i.test(message)) message += ` Retry in ${retry} s.`;
  return message;
}

/** fetch + JSON; throws an Error carrying the server's one-line message. */
export async function api(url, options = {}) {
  const init = { ...options };
  if (init.json !== undefined) {
    init.body = JSON.stringify(init.json);
    init.headers = { "Content-Type": "application/json", ...(init.headers || {}) };
    delete init.json;
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    throw new Error("The server could not be reached: " + e.message);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const err = new Error(failureMessage(response, body));
    err.status = response.status;
    err.body = body;
    throw err;
  }
  return body;
}

export function pct(x, digits = 1) {
  return Number.isFinite(x) ? x.toFixed(digits) : "–";
}

/** "ig" and friends as people read them. */
const NAMES = { ig: "IG", not_a_cell: "not a cell", not_a_blood_cell: "flagged not a blood cell (unreviewed)" };
export function labelName(label) {
  return NAMES[label] || String(label).replaceAll("_", " ");
}

export function showError(message) {
  const node = $("error");
  node.textContent = message;
  node.hidden = false;
}

export function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

/** A short message read out by screen readers and shown under the toolbar. */
export function announce(message) {
  $("review-status").textContent = message;
}

/** Send files chosen in `input` or dropped on `drop` to `onFiles` (a FileList). */
export function wireDropZone(drop, input, onFiles) {
  input.addEventListener("change", () => onFiles(input.files));
  drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", e => {
    e.preventDefault();
    drop.classList.remove("over");
    onFiles(e.dataTransfer.files);
  });
}
