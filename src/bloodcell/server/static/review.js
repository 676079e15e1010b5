// Reviewing cells: keys, the label menu and undo, all through the store's PATCHes.

import { $, announce, el, labelName, showError } from "./dom.js";
import { currentCard, focusCell, neighbour, nextAfter } from "./gallery.js";
import { EXTRA_LABELS, setLabel, state, undo } from "./store.js";

const EXTRA_KEYS = { not_a_cell: "0 / n", smudge: "s", artefact: "a" };

/** The label a key stands for, or undefined: 1-8 the model's classes, 0/n not a cell, s smudge, a artefact. */
export function keyLabel(key) {
  if (/^[1-9]$/.test(key)) return state.classes[Number(key) - 1];
  return { 0: "not_a_cell", n: "not_a_cell", s: "smudge", a: "artefact" }[key];
}

export function keyOf(label) {
  const i = state.classes.indexOf(label);
  return i >= 0 && i < 9 ? String(i + 1) : EXTRA_KEYS[label];
}

let chain = Promise.resolve();  // one PATCH at a time, so the undo stack keeps the order of the reviews
function serial(work) {
  chain = chain.then(work).catch(e => showError(e.message));
  return chain;
}

/** Label a cell; with `advance`, focus moves on to the next card as on an analyzer's review screen. */
export function review(cellId, label, advance = false) {
  return serial(async () => {
    const card = document.querySelector(`#gallery .cell[data-id="${CSS.escape(cellId)}"]`);
    const next = advance && card ? nextAfter(card) : cellId;
    const cell = state.cells.get(cellId);
    await setLabel(cellId, label);
    if (!focusCell(next)) focusCell(cellId);
    announce(`${cell.filename}: ${label == null ? "review cleared" : labelName(label)}. Press u to undo.`);
  });
}

export function undoLast() {
  return serial(async () => {
    const done = await undo();
    if (!done) { announce("Nothing to undo."); return; }
    focusCell(done.cellId);
    const name = state.cells.get(done.cellId)?.filename ?? "cell";
    announce(`Undone: ${name} is ${done.before == null ? "unreviewed" : labelName(done.before)} again.`);
  });
}

function onKey(e) {
  if (e.defaultPrevented || e.altKey) return;
  if (e.target.closest("input, select, textarea, dialog, #label-menu")) return;
  const undoKey = (e.key === "z" || e.key === "Z") && (e.ctrlKey || e.metaKey);
  if (undoKey || (e.key === "u" && !e.ctrlKey && !e.metaKey)) {
    e.preventDefault();
    undoLast();
    return;
  }
  if (e.ctrlKey || e.metaKey) return;
  const card = currentCard();
  if (!card) return;
  if (e.key.startsWith("Arrow")) {
    const to = neighbour(card, e.key);
    e.preventDefault();
    if (to) focusCell(to.dataset.id);
    return;
  }
  if (e.target !== card && (e.key === "Enter" || e.key === " ")) return;  // a button on the card
  const id = card.dataset.id;
  const label = e.key === "Enter" ? state.cells.get(id).predicted : keyLabel(e.key);
  if (!label) return;
  e.preventDefault();
  review(id, label, true);
}

function menuItems(cellId) {
  const cell = state.cells.get(cellId);
  const item = (text, hint, label, extra = "") => el("button", { type: "button", role: "menuitem", class: "menu-item" + extra,
    "data-label": label ?? "", onclick: () => { closeMenu(); review(cellId, label); } },
  el("span", { text }), el("kbd", { text: hint }));
  const items = [item(`confirm ${labelName(cell.predicted)}`, "Enter", cell.predicted, " confirm")];
  for (const label of [...state.classes, ...EXTRA_LABELS]) items.push(item(labelName(label), keyOf(label) || "", label));
  if (cell.label != null) items.push(item("clear review", "", null, " clear"));
  return items;
}

let opener = null;

export function openMenu(button, cellId) {
  const menu = $("label-menu");
  if (opener === button && !menu.hidden) { closeMenu(); return; }
  closeMenu();
  opener = button;
  menu.textContent = "";
  menu.append(...menuItems(cellId));
  menu.dataset.cell = cellId;
  menu.hidden = false;
  button.setAttribute("aria-expanded", "true");
  const r = button.getBoundingClientRect();
  const width = menu.offsetWidth, height = menu.offsetHeight;
  menu.style.left = `${Math.max(4, Math.min(r.left, innerWidth - width - 4))}px`;
  const below = r.bottom + 4;
  menu.style.top = `${below + height > innerHeight ? Math.max(4, r.top - height - 4) : below}px`;
  menu.querySelector("button").focus();
}

export function closeMenu(returnFocus = false) {
  const menu = $("label-menu");
  if (menu.hidden) return;
  menu.hidden = true;
  if (opener) {
    opener.setAttribute("aria-expanded", "false");
    if (returnFocus) opener.focus();
  }
  opener = null;
}

function onMenuKey(e) {
  const menu = $("label-menu");
  const items = [...menu.querySelectorAll("button")];
  const i = items.indexOf(document.activeElement);
  if (e.key === "Escape" || e.key === "Tab") { e.preventDefault(); closeMenu(true); return; }
  if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    e.preventDefault();
    const step = e.key === "ArrowDown" ? 1 : -1;
    items[(i + step + items.length) % items.length].focus();
    return;
  }
  const label = keyLabel(e.key);
  if (label) {
    e.preventDefault();
    const cellId = menu.dataset.cell;
    closeMenu();
    review(cellId, label);
  }
}

export function initReview() {
  document.addEventListener("keydown", onKey);
  $("label-menu").addEventListener("keydown", onMenuKey);
  document.addEventListener("click", e => {
    if (!e.target.closest("#label-menu, .menu-btn")) closeMenu();
  });
  addEventListener("resize", () => closeMenu());
  $("undo").addEventListener("click", () => undoLast());
}

/** The key legend: one entry per class in the model's order, then the other labels and actions. */
export function renderLegend() {
  const list = $("key-legend");
  list.textContent = "";
  const entry = (key, text) => list.append(el("li", {}, el("kbd", { text: key }), " ", text));
  state.classes.forEach((c, i) => { if (i < 9) entry(String(i + 1), labelName(c)); });
  for (const label of EXTRA_LABELS) entry(EXTRA_KEYS[label], labelName(label));
  entry("Enter", "confirm prediction");
  entry("u / Ctrl+Z", "undo");
  entry("← ↑ → ↓", "move");
}
