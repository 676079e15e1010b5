// Whole smear fields of the open case: upload, and each field drawn with a box per cell found;
// a box goes to its cell's card, and a card's "field" button back to its box.

import { $, el, labelName } from "./dom.js";
import { filters, focusCell, renderGallery } from "./gallery.js";
import { changed, finalLabel, postInBatches, state } from "./store.js";

// The colours of `bloodcell predict --fields --overlay` (bloodcell.fields.overlay.COLOURS).
const COLOURS = {
  basophil: "rgb(110,40,170)", eosinophil: "rgb(230,120,0)", erythroblast: "rgb(200,0,60)", ig: "rgb(0,150,150)",
  lymphocyte: "rgb(0,90,230)", monocyte: "rgb(120,80,30)", neutrophil: "rgb(0,160,0)", platelet: "rgb(240,0,200)",
};
const EXCLUDED = "rgb(128,128,128)";
const SVG = "http://www.w3.org/2000/svg";
const figures = new Map();  // field id -> its <figure> (kept, so the image is not fetched again)

const fieldsUrl = (part = "") => `/v1/cases/${encodeURIComponent(state.caseId)}/fields${part}`;

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

/** Upload field images to the open case; returns {added cells, fields, skipped}. */
export async function uploadFields(files, progress = () => {}) {
  const result = { added: 0, fields: 0 };
  result.skipped = await postInBatches(fieldsUrl(), files, progress, body => {
    for (const c of body.cells) state.cells.set(String(c.id), c);
    state.fields.push(...body.fields);
    result.added += body.cells.length;
    result.fields += body.fields.length;
    state.kase = body.case;
    changed("cells");
  });
  return result;
}

function describeBox(cell, box) {
  const parts = [`${labelName(finalLabel(cell))}${cell.label == null ? " (model)" : " (reviewed)"}`];
  if (cell.not_a_blood_cell && cell.label == null) parts.push("maybe not a blood cell");
  if (box.at_border) parts.push("cut by the border");
  return `Cell ${cell.id}: ${parts.join(", ")}. Go to its card.`;
}

/** Show a cell's card, clearing filters that hide it. */
export function goToCard(cellId) {
  if (!focusCell(cellId)) {
    filters.label = ""; filters.flag = "";
    $("filter-label").value = ""; $("filter-flag").value = "";
    renderGallery();
    focusCell(cellId);
  }
  const card = document.querySelector(`#gallery .cell[data-id="${CSS.escape(String(cellId))}"]`);
  card?.classList.add("flash");
  setTimeout(() => card?.classList.remove("flash"), 1500);
}

/** Scroll to a cell's box on its field and mark it. */
export function goToBox(cellId) {
  const g = document.querySelector(`#fields .box[data-cell="${CSS.escape(String(cellId))}"]`);
  if (!g) return false;
  $("fields-box").open = true;
  g.closest("figure").scrollIntoView({ block: "center" });
  g.classList.add("is-target");
  g.focus({ preventScroll: true });
  setTimeout(() => g.classList.remove("is-target"), 1800);
  return true;
}

function boxNode(box, field) {
  const cell = state.cells.get(String(box.id));
  if (!cell) return null;
  const label = finalLabel(cell);
  const colour = COLOURS[label] || EXCLUDED;
  const [x0, y0, x1, y1] = box.box;
  const size = Math.max(10, Math.round(Math.max(field.width, field.height) / 36));
  const above = y0 - size * 0.35 > size;
  const text = labelName(label) + (box.at_border ? "*" : "");
  const rightAligned = x0 + 0.62 * size * text.length > field.width;  // keep the label on the image
  const doubtful = colour === EXCLUDED || (cell.label == null && cell.not_a_blood_cell);
  const g = svg("g", { class: "box" + (doubtful ? " excluded" : "") + (cell.label == null ? "" : " reviewed"),
    "data-cell": String(box.id), tabindex: "0", role: "button", "aria-label": describeBox(cell, box) },
  svg("title", {}, describeBox(cell, box)),
  svg("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, stroke: colour }),
  svg("text", { x: rightAligned ? x1 - 2 : x0 + 2, y: above ? y0 - size * 0.35 : y1 + size, fill: colour,
    "font-size": size, "text-anchor": rightAligned ? "end" : "start" }, text));
  const go = e => { e.preventDefault(); goToCard(box.id); };
  g.addEventListener("click", go);
  g.addEventListener("keydown", e => { if (e.key === "Enter" || e.key === " ") go(e); });
  return g;
}

function figureOf(field) {
  if (!figures.has(field.id)) {
    const img = el("img", { src: fieldsUrl(`/${field.id}/image`), alt: `Field ${field.filename}`, loading: "lazy" });
    const fig = el("figure", { class: "field-fig", "data-field": String(field.id) },
      el("div", { class: "field-frame" }, img), el("figcaption"));
    figures.set(field.id, fig);
  }
  return figures.get(field.id);
}

function caption(field) {
  const n = field.cells.length, border = field.cells.filter(c => c.at_border).length;
  const parts = [`${field.filename}: ${n} cell${n === 1 ? "" : "s"} found`];
  if (field.platelets_by_size) parts.push(`${field.platelets_by_size} platelet${field.platelets_by_size === 1 ? "" : "s"} by size`);
  if (border) parts.push(`* ${border} cut by the border`);
  if (field.left_to_neighbour) parts.push(`${field.left_to_neighbour} left to the neighbouring tile`);
  return parts.join(" · ") + ". Click a box to review its cell.";
}

/** Draw the open case's fields with their boxes (labels follow the reviews). */
export function renderFields() {
  const fields = state.fields || [];
  $("fields-box").hidden = !fields.length;
  $("fields-count").textContent = String(fields.length);
  const root = $("fields");
  const keep = new Set(fields.map(f => f.id));
  for (const id of [...figures.keys()]) if (!keep.has(id)) figures.delete(id);
  root.textContent = "";
  for (const field of fields) {
    const fig = figureOf(field);
    const frame = fig.querySelector(".field-frame");
    frame.querySelector("svg")?.remove();
    const boxes = field.cells.map(b => boxNode(b, field)).filter(Boolean);
    frame.append(svg("svg", { class: "field-boxes", viewBox: `0 0 ${field.width} ${field.height}`,
      preserveAspectRatio: "none", role: "group", "aria-label": `Cells found in ${field.filename}` }, ...boxes));
    fig.querySelector("figcaption").textContent = caption(field);
    root.append(fig);
  }
}
