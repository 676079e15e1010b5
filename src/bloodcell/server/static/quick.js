// Quick classify: images sent to /v1/predict and shown at once; nothing is stored on the server.

import { $, el, failureMessage, wireDropZone } from "./dom.js";

const q = id => $("quick-" + id);
let limits = { max_files: 64, max_upload_mb: 32 };

function showError(message) {
  q("error").textContent = message;
  q("error").hidden = false;
}

function clearOutput() {
  q("error").hidden = true;
  q("error").textContent = "";
  q("skipped").hidden = true;
  q("skipped").textContent = "";
  q("results").textContent = "";
  q("differential").hidden = true;
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
  if (pred.uncertain) {
    const why = pred.unfamiliar ? "unlike the training cells — review" : "uncertain — review";
    flags.append(el("span", { class: "flag uncertain", text: why }));
  }
  if (pred.framing === "cell") flags.append(el("span", { class: "flag framing", text: "cell located" }));
  if (pred.framing === "centre") flags.append(el("span", { class: "flag framing", text: "no cell found — centre crop" }));
  const images = el("div", { class: "images" });
  if (file) {
    const img = el("img", { class: "original", alt: `uploaded image ${pred.filename}` });
    img.addEventListener("error", () => img.replaceWith(el("p", {
      class: "no-preview", text: "No preview: this browser cannot show the file (TIFF); the cell was classified." })),
    { once: true });
    img.src = URL.createObjectURL(file);
    images.append(el("figure", {}, img, el("figcaption", { text: "image" })));
  }
  if (pred.gradcam_png) {
    const heat = el("img", { class: "heatmap", alt: `Grad-CAM heatmap for ${pred.filename}` });
    heat.src = pred.gradcam_png;
    images.append(el("figure", {}, heat, el("figcaption", { text: "Grad-CAM on the model's crop" })));
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

function renderDifferential(d, warning) {
  if (!d) { q("differential").hidden = true; return; }
  q("differential").hidden = false;
  let summary = `${d.counted} cells counted`;
  if (d.excluded_not_a_blood_cell) summary += `, ${d.excluded_not_a_blood_cell} image(s) left out as not blood cells`;
  if (d.uncertain) summary += `, ${d.uncertain} uncertain (counted, flagged for review)`;
  q("diff-summary").textContent = summary + ".";
  q("diff-warning").hidden = !warning;
  q("diff-warning").textContent = warning || "";
  const body = q("differential").querySelector("tbody");
  body.textContent = "";
  const chart = q("diff-chart");
  chart.textContent = "";
  const max = Math.max(1, ...d.classes.map(r => r.percent || 0));
  for (const r of d.classes) {
    const share = r.percent === null ? "-" : r.percent.toFixed(1);  // null: no cell counted
    body.append(el("tr", {},
      el("td", { text: r.class }), el("td", { text: String(r.count) }),
      el("td", { text: share }),
      el("td", { text: r.ci95 === null ? "-" : `${r.ci95[0].toFixed(1)}–${r.ci95[1].toFixed(1)}` }),
      el("td", { text: String(r.uncertain) })));
    const column = el("div", { class: "col", title: `${r.class}: ${r.count} (${share}%)` });
    const fill = el("div", { class: "col-fill" });
    fill.style.height = `${(100 * (r.percent || 0)) / max}%`;
    column.append(el("span", { class: "col-value", text: r.percent === null ? "-" : `${r.percent.toFixed(0)}%` }), fill);
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
  q("status").textContent = `Classifying ${files.length} image${files.length > 1 ? "s" : ""}…`;
  const url = "/v1/predict" + (q("explain").checked ? "?explain=true" : "");
  let response, body;
  try {
    response = await fetch(url, { method: "POST", body: form });
    body = await response.json().catch(() => ({}));
  } catch (e) {
    q("status").textContent = "";
    showError("The server could not be reached: " + e.message);
    return;
  }
  q("status").textContent = "";
  if (!response.ok) {
    showError(failureMessage(response, body));
    return;
  }
  let next = 0;  // predictions keep the upload order; unreadable files are missing from them
  for (const pred of body.predictions) {
    while (next < files.length && files[next].name !== pred.filename) next += 1;
    q("results").append(card(pred, files[next]));
    next += 1;
  }
  if (body.skipped && body.skipped.length) {
    q("skipped").hidden = false;
    q("skipped").append(el("strong", { text: "Skipped: " }));
    const list = el("ul");
    for (const s of body.skipped) list.append(el("li", { text: s.detail }));
    q("skipped").append(list);
  }
  renderDifferential(body.differential, body.warning);
  q("status").textContent = `${body.predictions.length} image${body.predictions.length > 1 ? "s" : ""} classified.`;
}

export function initQuick(serverLimits) {
  limits = serverLimits || limits;
  const drop = q("drop"), input = q("input");
  wireDropZone(drop, input, upload);
}
