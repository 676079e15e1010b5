"use strict";

const drop = document.getElementById("drop");
const input = document.getElementById("file-input");
const explainBox = document.getElementById("explain");
const statusEl = document.getElementById("status");
const errorEl = document.getElementById("error");
const skippedEl = document.getElementById("skipped");
const resultsEl = document.getElementById("results");
const diffEl = document.getElementById("differential");

let limits = { max_files: 64, max_upload_mb: 32 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function showError(message) {
  errorEl.textContent = message;
  errorEl.hidden = false;
}

function failureMessage(response, body) {
  let message = (body && typeof body.detail === "string" && body.detail)
    || `Request failed (${response.status} ${response.statusText}).`;
  const retry = response.headers.get("Retry-After");
  if (response.status === 503 && retry && !/retry/i.test(message)) message += ` Retry in ${retry} s.`;
  return message;
}

function clearOutput() {
  errorEl.hidden = true;
  errorEl.textContent = "";
  skippedEl.hidden = true;
  skippedEl.textContent = "";
  resultsEl.textContent = "";
  diffEl.hidden = true;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/model");
    const card = await r.json();
    if (!r.ok) throw new Error(card.detail || r.statusText);
    limits = card.limits || limits;
    const rt = card.runtime || {};
    document.getElementById("model-line").textContent =
      `Model: ${card.name || rt.name || card.architecture} (${rt.backend || "?"}, ${rt.image_size} px)`;
    document.getElementById("limits").textContent =
      `Up to ${limits.max_files} images and ${limits.max_upload_mb} MB per upload` +
      (limits.max_megapixels ? `, ${limits.max_megapixels} megapixels per image.` : ".");
  } catch (e) {
    document.getElementById("model-line").textContent = "Model card unavailable: " + e.message;
  }
}

function probabilityBars(probs, top) {
  const list = el("ul", { class: "bars" });
  const entries = Object.entries(probs).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of entries) {
    const pct = (100 * p).toFixed(1);
    const bar = el("span", { class: "bar-fill" + (name === top ? " top" : "") });
    bar.style.width = `${Math.max(0.5, 100 * p)}%`;
    list.append(el("li", { "data-class": name },
      el("span", { class: "bar-label", text: name }),
      el("span", { class: "bar" }, bar),
      el("span", { class: "bar-value", text: `${pct}%` })));
  }
  return list;
}

function card(pred, file) {
  const flags = el("div", { class: "flags" });
  if (pred.not_a_blood_cell) flags.append(el("span", { class: "flag ood", text: "not a blood cell?" }));
  if (pred.uncertain) flags.append(el("span", { class: "flag uncertain", text: "uncertain — review" }));
  if (pred.framing === "cell") flags.append(el("span", { class: "flag framing", text: "cell located" }));
  if (pred.framing === "centre") flags.append(el("span", { class: "flag framing", text: "no cell found — centre crop" }));
  const images = el("div", { class: "images" });
  if (file) {
    const img = el("img", { class: "original", alt: `uploaded image ${pred.filename}` });
    img.src = URL.createObjectURL(file);
    images.append(el("figure", {}, img, el("figcaption", { text: "image" })));
  }
  if (pred.gradcam_png) {
    const heat = el("img", { class: "heatmap", alt: `Grad-CAM heatmap for ${pred.filename}` });
    heat.src = pred.gradcam_png;
    images.append(el("figure", {}, heat, el("figcaption", { text: "Grad-CAM" })));
  }
  return el("article", { class: "card" + (pred.not_a_blood_cell ? " is-ood" : "") + (pred.uncertain ? " is-uncertain" : "") },
    el("h3", { class: "filename", text: pred.filename }),
    images,
    el("p", { class: "prediction" },
      el("span", { class: "label", text: pred.label }),
      el("span", { class: "prob", text: ` ${(100 * pred.probability).toFixed(1)}%` })),
    flags,
    probabilityBars(pred.probabilities, pred.label));
}

function renderDifferential(d) {
  if (!d) { diffEl.hidden = true; return; }
  diffEl.hidden = false;
  let summary = `${d.counted} cells counted`;
  if (d.excluded_not_a_blood_cell) summary += `, ${d.excluded_not_a_blood_cell} image(s) left out as not blood cells`;
  if (d.uncertain) summary += `, ${d.uncertain} uncertain (counted, flagged for review)`;
  document.getElementById("diff-summary").textContent = summary + ".";
  const body = diffEl.querySelector("tbody");
  body.textContent = "";
  const chart = document.getElementById("diff-chart");
  chart.textContent = "";
  const max = Math.max(1, ...d.classes.map(r => r.percent));
  for (const r of d.classes) {
    body.append(el("tr", {},
      el("td", { text: r.class }), el("td", { text: String(r.count) }),
      el("td", { text: r.percent.toFixed(1) }),
      el("td", { text: `${r.ci95[0].toFixed(1)}–${r.ci95[1].toFixed(1)}` }),
      el("td", { text: String(r.uncertain) })));
    const column = el("div", { class: "col", title: `${r.class}: ${r.count} (${r.percent.toFixed(1)}%)` });
    const fill = el("div", { class: "col-fill" });
    fill.style.height = `${(100 * r.percent) / max}%`;
    column.append(el("span", { class: "col-value", text: `${r.percent.toFixed(0)}%` }), fill);
    chart.append(el("div", { class: "col-wrap" }, column, el("span", { class: "col-label", text: r.class })));
  }
}

async function upload(fileList) {
  const files = Array.from(fileList);
  clearOutput();
  if (!files.length) return;
  if (files.length > limits.max_files) {
    showError(`Too many files: ${files.length}; at most ${limits.max_files} images per upload.`);
    return;
  }
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  statusEl.textContent = `Classifying ${files.length} image${files.length > 1 ? "s" : ""}…`;
  const url = "/v1/predict" + (explainBox.checked ? "?explain=true" : "");
  let response, body;
  try {
    response = await fetch(url, { method: "POST", body: form });
    body = await response.json().catch(() => ({}));
  } catch (e) {
    statusEl.textContent = "";
    showError("The server could not be reached: " + e.message);
    return;
  }
  statusEl.textContent = "";
  if (!response.ok) {
    showError(failureMessage(response, body));
    return;
  }
  const byName = new Map(files.map(f => [f.name, f]));
  for (const pred of body.predictions) resultsEl.append(card(pred, byName.get(pred.filename)));
  if (body.skipped && body.skipped.length) {
    skippedEl.hidden = false;
    skippedEl.append(el("strong", { text: "Skipped: " }));
    const list = el("ul");
    for (const s of body.skipped) list.append(el("li", { text: s.detail }));
    skippedEl.append(list);
  }
  renderDifferential(body.differential);
  statusEl.textContent = `${body.predictions.length} image${body.predictions.length > 1 ? "s" : ""} classified.`;
}

input.addEventListener("change", () => upload(input.files));
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => {
  e.preventDefault();
  drop.classList.remove("over");
  upload(e.dataTransfer.files);
});
drop.addEventListener("keydown", e => { if (e.key === "Enter" || e.key === " ") input.click(); });
loadModel();
