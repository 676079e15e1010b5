// The case bar: create or open a case (its id in the URL hash), upload cells in batches, progress, exports.

import { $, announce, clearError, el, showError, wireDropZone } from "./dom.js";
import { uploadFields } from "./fields.js";
import { createCase, exportUrl, listCases, openCase, state, updateCase, uploadCells } from "./store.js";

export const hashCaseId = () => new URLSearchParams(location.hash.slice(1)).get("case");

export async function refreshCaseList() {
  const select = $("case-select");
  let cases;
  try {
    cases = await listCases();
  } catch (e) {
    showError("Cases could not be listed: " + e.message);
    return;
  }
  select.textContent = "";
  select.append(el("option", { value: "", text: cases.length ? "choose a case…" : "no cases yet" }));
  for (const c of cases) {  // the server lists the most recently changed first
    select.append(el("option", { value: String(c.id), text: `${c.accession} (${c.n_cells} / ${c.target} cells)` }));
  }
  select.value = state.caseId == null ? "" : String(state.caseId);
}

/** Show the open case's title, note, target and progress, and point the export links at it. */
export function renderCaseSummary() {
  const k = state.kase;
  $("case-open").hidden = !k;
  $("review").hidden = !k;
  $("no-case").hidden = !!k;
  if (!k) { $("new-case-box").open = true; return; }
  document.title = `${k.accession} · bloodcell review`;
  $("case-title").textContent = `Case ${k.accession}`;
  $("case-note").textContent = k.note || "";
  $("case-target").value = String(k.target);
  if (![...$("case-target").options].some(o => o.value === String(k.target))) {
    $("case-target").append(el("option", { value: String(k.target), text: String(k.target) }));
    $("case-target").value = String(k.target);
  }
  const n = k.n_cells ?? state.cells.size;
  $("case-progress").max = k.target;
  $("case-progress").value = Math.min(n, k.target);
  $("case-count").textContent = `${n} / ${k.target} cells`;
  const d = k.differential || {};
  $("case-reviewed").textContent = `${k.n_reviewed ?? d.reviewed ?? 0} reviewed · ${d.wbc_total ?? 0} white cells`;
  $("case-warning").hidden = !k.warning;
  $("case-warning").textContent = k.warning || "";
  for (const [id, name] of [["export-csv", "export.csv"], ["export-json", "export.json"], ["export-report", "report"],
    ["export-zip", "dataset.zip"]]) $(id).href = exportUrl(name);
  const option = [...$("case-select").options].find(o => o.value === String(k.id));
  if (option) option.textContent = `${k.accession} (${n} / ${k.target} cells)`;
}

function showSkipped(skipped) {
  const box = $("skipped");
  box.textContent = "";
  box.hidden = !skipped.length;
  if (!skipped.length) return;
  box.append(el("strong", { text: `Skipped ${skipped.length} file${skipped.length > 1 ? "s" : ""}:` }));
  const list = el("ul");
  for (const s of skipped) list.append(el("li", { text: s.filename ? `${s.filename}: ${s.error}` : s.error }));
  box.append(list);
}

async function upload(fileList) {
  const files = Array.from(fileList);
  if (!files.length || !state.caseId) return;
  clearError();
  const k = state.kase, room = k.target - k.n_cells;
  if (files.length > room) {
    showError(`Case ${k.accession} holds ${k.n_cells} of its ${k.target} cells: ${room} more fit, `
      + `${files.length} were chosen. Choose fewer images or raise the target.`);
    $("cell-input").value = "";
    return;
  }
  const status = $("upload-status");
  try {
    const { added, skipped } = await uploadCells(files, (i, n, size) => {
      status.textContent = `Classifying ${size} image${size > 1 ? "s" : ""}` + (n > 1 ? ` (request ${i + 1} of ${n})…` : "…");
    });
    status.textContent = `${added} cell${added === 1 ? "" : "s"} added.`;
    showSkipped(skipped);
  } catch (e) {
    status.textContent = "";
    showError(e.message);
  }
  $("cell-input").value = "";
}

async function uploadWholeFields(fileList) {
  const files = Array.from(fileList);
  if (!files.length || !state.caseId) return;
  clearError();
  const status = $("upload-status");
  try {
    const { added, fields, skipped } = await uploadFields(files, (i, n, size) => {
      status.textContent = `Finding and classifying the cells of ${size} field${size > 1 ? "s" : ""}`
        + (n > 1 ? ` (request ${i + 1} of ${n})…` : "…");
    });
    status.textContent = `${fields} field${fields === 1 ? "" : "s"}: ${added} cell${added === 1 ? "" : "s"} added.`;
    showSkipped(skipped);
  } catch (e) {
    status.textContent = "";
    showError(e.message);
  }
  $("field-input").value = "";
}

async function create(e) {
  e.preventDefault();
  clearError();
  const accession = $("new-accession").value.trim();
  if (!accession) { showError("Enter the accession number of the case."); return; }
  try {
    const kase = await createCase(accession, $("new-note").value.trim(), Number($("new-target").value));
    $("new-case").reset();
    location.hash = `case=${encodeURIComponent(kase.id)}`;
    announce(`Case ${kase.accession} created.`);
  } catch (err) {
    showError(err.message);
  }
}

/** Open the case named in the URL hash (or none). */
export async function followHash() {
  const id = hashCaseId();
  clearError();
  try {
    await openCase(id);
  } catch (e) {
    showError(`Case ${id} could not be opened: ${e.message}`);
    await openCase(null);
  }
  await refreshCaseList();
}

export function initCaseBar() {
  $("new-case").addEventListener("submit", create);
  $("case-select").addEventListener("change", e => {
    location.hash = e.target.value ? `case=${encodeURIComponent(e.target.value)}` : "";
  });
  $("case-target").addEventListener("change", async e => {
    try {
      await updateCase({ target: Number(e.target.value) });
    } catch (err) {
      showError(err.message);
      renderCaseSummary();
    }
  });
  addEventListener("hashchange", followHash);
  const drop = $("cell-drop"), input = $("cell-input");
  wireDropZone(drop, input, upload);
  wireDropZone($("field-drop"), $("field-input"), uploadWholeFields);
}
