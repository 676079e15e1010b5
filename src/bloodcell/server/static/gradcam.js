// Grad-CAM on demand: fetched when asked for, shown beside the full image with the model's crop marked.

import { $, failureMessage, labelName, pct } from "./dom.js";
import { cellUrl, state } from "./store.js";

let lastUrl = null;
let returnTo = null;

/** "x0,y0,x1,y1" -> numbers, or null when the header is missing or malformed. */
export function parseCropBox(header) {
  const parts = (header || "").split(",").map(Number);
  return parts.length === 4 && parts.every(Number.isFinite) ? parts : null;
}

function markBox(box, cell) {
  const mark = $("cam-box");
  const caption = $("cam-full-caption");
  if (!box || !cell.width || !cell.height) {
    mark.hidden = true;
    caption.textContent = `Full image (${cell.width}×${cell.height} px).`;
    return;
  }
  const [x0, y0, x1, y1] = box;
  caption.textContent = `Full image (${cell.width}×${cell.height} px); the dashed box (${x0},${y0})–(${x1},${y1}) `
    + "is the crop the model was given.";
  mark.hidden = false;
  mark.style.left = `${(100 * x0) / cell.width}%`;
  mark.style.top = `${(100 * y0) / cell.height}%`;
  mark.style.width = `${(100 * (x1 - x0)) / cell.width}%`;
  mark.style.height = `${(100 * (y1 - y0)) / cell.height}%`;
}

export async function showGradcam(cellId) {
  const cell = state.cells.get(cellId);
  const dialog = $("cam-dialog");
  returnTo = document.activeElement;
  $("cam-title").textContent = `Grad-CAM: ${cell.filename}`;
  $("cam-class").textContent = `for the predicted class ${labelName(cell.predicted)} (${pct(100 * cell.confidence, 0)}%)`;
  $("cam-full").src = cellUrl(cellId, "/image");
  $("cam-full").alt = `full image ${cell.filename}`;
  $("cam-heat").removeAttribute("src");
  $("cam-box").hidden = true;
  $("cam-status").textContent = "Computing Grad-CAM…";
  $("cam-status").hidden = false;
  if (!dialog.open) dialog.showModal();
  let response;
  try {
    response = await fetch(cellUrl(cellId, "/gradcam"));
  } catch (e) {
    $("cam-status").textContent = "The server could not be reached: " + e.message;
    return;
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    $("cam-status").textContent = failureMessage(response, body);
    return;
  }
  const blob = await response.blob();
  if (lastUrl) URL.revokeObjectURL(lastUrl);
  lastUrl = URL.createObjectURL(blob);
  const heat = $("cam-heat");
  heat.src = lastUrl;
  heat.alt = `Grad-CAM heatmap of the model's input crop of ${cell.filename}`;
  markBox(parseCropBox(response.headers.get("X-Crop-Box")), cell);
  $("cam-status").hidden = true;
}

export function initGradcam() {
  const dialog = $("cam-dialog");
  $("cam-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    if (returnTo && returnTo.isConnected) returnTo.focus();
    returnTo = null;
  });
  dialog.addEventListener("click", e => { if (e.target === dialog) dialog.close(); });
}
