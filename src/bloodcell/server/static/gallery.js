// The review gallery: a queue of flagged cells first, then one group per class, with filters.

import { $, el, labelName, pct } from "./dom.js";
import { EXTRA_LABELS, cellUrl, finalLabel, state } from "./store.js";

const cards = new Map();   // cell id -> its card element (kept so images are not fetched again)
export const filters = { label: "", flag: "" };
const actions = { gradcam: () => {}, menu: () => {}, field: () => {} };

/** Wire the card buttons to the page's handlers: {gradcam(cellId), menu(button, cellId), field(cellId)}. */
export function setActions(handlers) { Object.assign(actions, handlers); }

const inQueue = c => c.label == null && (c.uncertain || c.not_a_blood_cell);

function matches(cell) {
  if (filters.label && finalLabel(cell) !== filters.label) return false;
  if (filters.flag === "uncertain") return cell.uncertain;
  if (filters.flag === "not_a_blood_cell") return cell.not_a_blood_cell;
  if (filters.flag === "unreviewed") return cell.label == null;
  return true;
}

/** [{key, title, cells}] in display order: the queue, the model's classes, then the extra labels. */
export function groups(cells) {
  const shown = cells.filter(matches);
  const order = [...state.classes, ...EXTRA_LABELS];
  const out = [{ key: "queue", title: "Review queue: uncertain and not-a-cell", cells: shown.filter(inQueue) }];
  const rest = shown.filter(c => !inQueue(c));
  for (const label of order) out.push({ key: label, title: labelName(label), cells: rest.filter(c => finalLabel(c) === label) });
  const other = rest.filter(c => !order.includes(finalLabel(c)));
  if (other.length) out.push({ key: "other", title: "other labels", cells: other });
  return out.filter(g => g.cells.length);
}

function describe(cell) {
  const parts = [`${cell.filename}: predicted ${labelName(cell.predicted)} ${pct(100 * cell.confidence, 0)}%`];
  if (cell.uncertain) parts.push(cell.unfamiliar ? "uncertain: unlike the training cells" : "uncertain");
  if (cell.not_a_blood_cell) parts.push("maybe not a blood cell");
  parts.push(cell.label == null ? "not reviewed" : `reviewed as ${labelName(cell.label)}`);
  return parts.join(", ");
}

function fillCard(node, cell) {
  const changedLabel = cell.label != null && cell.label !== cell.predicted;
  node.className = "cell" + (cell.uncertain ? " is-uncertain" : "") + (cell.not_a_blood_cell ? " is-ood" : "")
    + (cell.label != null ? " is-reviewed" : "") + (changedLabel ? " is-changed" : "");
  node.setAttribute("aria-label", describe(cell));
  const shown = cell.label ?? cell.predicted;
  node.querySelector(".pred-label").textContent = labelName(shown);
  node.querySelector(".conf").textContent = changedLabel ? "" : `${pct(100 * cell.confidence, 0)}%`;
  node.querySelector(".was").textContent = changedLabel
    ? `model: ${labelName(cell.predicted)} ${pct(100 * cell.confidence, 0)}%` : "";
  const flags = node.querySelector(".flags");
  flags.textContent = "";
  if (cell.uncertain) {
    flags.append(el("span", cell.unfamiliar
      ? { class: "flag uncertain", text: "unfamiliar", title: "unlike the model's training cells: review it" }
      : { class: "flag uncertain", text: "uncertain" }));
  }
  if (cell.not_a_blood_cell) flags.append(el("span", { class: "flag ood", text: "not a cell?" }));
  if (cell.framing === "centre") flags.append(el("span", { class: "flag framing", text: "centre crop", title: "no cell found: the model saw the image centre" }));
  const review = node.querySelector(".review");
  review.textContent = cell.label == null ? "unreviewed"
    : `✓ ${changedLabel ? "reclassified" : "confirmed"}${cell.reviewer ? ` · ${cell.reviewer}` : ""}`;
}

function makeCard(cell) {
  const id = String(cell.id);
  const menuButton = el("button", { type: "button", class: "small menu-btn", "aria-haspopup": "menu",
    "aria-expanded": "false", text: "Label…", title: "Reclassify this cell" });
  const camButton = el("button", { type: "button", class: "small cam-btn", text: "Grad-CAM",
    title: "Show where the model looked (computed on demand)" });
  menuButton.addEventListener("click", e => { e.stopPropagation(); actions.menu(menuButton, id); });
  camButton.addEventListener("click", e => { e.stopPropagation(); actions.gradcam(id); });
  const buttons = [menuButton, camButton];
  if (cell.field_id != null) {
    const fieldButton = el("button", { type: "button", class: "small field-btn", text: "Field",
      title: "Show this cell on its field" });
    fieldButton.addEventListener("click", e => { e.stopPropagation(); actions.field(id); });
    buttons.push(fieldButton);
  }
  const img = el("img", { class: "thumb", src: cellUrl(id, "/image"), alt: `cell image ${cell.filename}`,
    loading: "lazy", decoding: "async" });
  const node = el("article", { tabindex: "0", "data-id": id },
    img,
    el("p", { class: "pred" }, el("span", { class: "pred-label" }), " ", el("span", { class: "conf" })),
    el("p", { class: "was" }),
    el("div", { class: "flags" }),
    el("p", { class: "review" }),
    el("div", { class: "card-actions" }, ...buttons));
  node.addEventListener("click", () => node.focus());
  return node;
}

/** Redraw the gallery from the state, keeping card elements and the focused card. */
export function renderGallery() {
  const root = $("gallery");
  const focusedId = document.activeElement?.closest?.(".cell")?.dataset.id;
  const all = [...state.cells.values()];
  for (const id of [...cards.keys()]) if (!state.cells.has(id)) cards.delete(id);
  root.textContent = "";
  for (const g of groups(all)) {
    const grid = el("div", { class: "grid" });
    for (const cell of g.cells) {
      const key = String(cell.id);
      if (!cards.has(key)) cards.set(key, makeCard(cell));
      const node = cards.get(key);
      fillCard(node, cell);
      grid.append(node);
    }
    const heading = el("h3", { id: `group-${g.key}` }, g.title, " ", el("span", { class: "count", text: String(g.cells.length) }));
    root.append(el("section", { class: "group" + (g.key === "queue" ? " queue" : ""), "data-group": g.key,
      "aria-labelledby": `group-${g.key}` }, heading, grid));
  }
  const shown = root.querySelectorAll(".cell").length;
  $("gallery-empty").hidden = shown > 0;
  $("gallery-empty").textContent = state.cells.size ? "No cell matches the filters." : "No cells yet: upload images to the case.";
  if (focusedId) focusCell(focusedId, false);
}

export const cardList = () => [...$("gallery").querySelectorAll(".cell")];

export function focusCell(id, scroll = true) {
  const node = cards.get(String(id));
  if (!node || !node.isConnected) return false;
  node.focus({ preventScroll: !scroll });
  if (scroll) node.scrollIntoView({ block: "nearest" });
  return true;
}

/** The card the keyboard acts on: the focused one (or the one holding focus). */
export function currentCard() {
  return document.activeElement?.closest?.(".cell") || null;
}

/** The card to go to from `node`: by order (left/right) or by position on screen (up/down). */
export function neighbour(node, key) {
  const list = cardList();
  const i = list.indexOf(node);
  if (key === "ArrowRight") return list[i + 1] || null;
  if (key === "ArrowLeft") return list[i - 1] || null;
  const here = node.getBoundingClientRect();
  const down = key === "ArrowDown";
  const rows = list.map(n => [n, n.getBoundingClientRect()])
    .filter(([, r]) => (down ? r.top > here.top + 4 : r.top < here.top - 4));
  if (!rows.length) return null;
  const rowTop = down ? Math.min(...rows.map(([, r]) => r.top)) : Math.max(...rows.map(([, r]) => r.top));
  const row = rows.filter(([, r]) => Math.abs(r.top - rowTop) < 4);
  row.sort((a, b) => Math.abs(a[1].left - here.left) - Math.abs(b[1].left - here.left));
  return row[0][0];
}

/** After `node` is labelled, the next card to review (the one after it, else the one before). */
export function nextAfter(node) {
  const list = cardList();
  const i = list.indexOf(node);
  return (list[i + 1] || list[i - 1] || null)?.dataset.id ?? null;
}
