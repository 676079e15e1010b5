// The open case, its cells and the review actions (with an undo stack), talking to /v1/cases.

import { api } from "./dom.js";

export const EXTRA_LABELS = ["not_a_cell", "smudge", "artefact"];

export const state = {
  classes: [],          // the model's class names, in its order
  limits: { max_files: 64, max_upload_mb: 32 },
  caseId: null,
  kase: null,           // the Case as the server last returned it
  cells: new Map(),     // cell id -> Cell, in upload order
  fields: [],           // whole fields of the case, each with its cells' boxes
  undo: [],             // [{cellId, before, after}]
  reviewer: "",
};

const listeners = new Set();
export function onChange(fn) { listeners.add(fn); }
export function changed(what) { for (const fn of listeners) fn(what); }

const caseUrl = (id = state.caseId) => `/v1/cases/${encodeURIComponent(id)}`;
export const cellUrl = (cellId, part = "") => `${caseUrl()}/cells/${encodeURIComponent(cellId)}${part}`;
export const exportUrl = name => `${caseUrl()}/${name}`;

export async function listCases() {
  return (await api("/v1/cases")).cases || [];
}

export async function createCase(accession, note, target) {
  const body = { accession, target };
  if (note) body.note = note;
  return api("/v1/cases", { method: "POST", json: body });
}

export async function openCase(id) {
  if (!id) {
    Object.assign(state, { caseId: null, kase: null, cells: new Map(), fields: [], undo: [] });
    changed("case");
    return;
  }
  const [kase, list, fields] = await Promise.all([api(caseUrl(id)), api(`${caseUrl(id)}/cells`),
    api(`${caseUrl(id)}/fields`)]);
  Object.assign(state, { caseId: kase.id, kase, cells: new Map(list.cells.map(c => [String(c.id), c])),
    fields: fields.fields, undo: [] });
  changed("case");
}

export async function updateCase(fields) {
  state.kase = await api(caseUrl(), { method: "PATCH", json: fields });
  changed("summary");
}

async function refreshCase() {
  state.kase = await api(caseUrl());
  changed("summary");
}

/** Split files into requests within the server's per-request limits on count and size. */
export function batches(files) {
  const maxFiles = Math.max(1, state.limits.max_files || 64);
  const maxBytes = 0.9 * 1e6 * (state.limits.max_upload_mb || 32);
  const out = [];
  let current = [], bytes = 0;
  for (const f of files) {
    if (current.length && (current.length >= maxFiles || bytes + f.size > maxBytes)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(f);
    bytes += f.size;
  }
  if (current.length) out.push(current);
  return out;
}

/** POST files to `url` in as many requests as the limits need; `onBody(body)` takes each answer.
 * Returns the files skipped as [{filename, error}] (a request with no readable file is one of them). */
export async function postInBatches(url, files, progress, onBody) {
  const parts = batches(files);
  const skipped = [];
  const named = list => (list || []).map(s => ({ filename: s.filename, error: s.error || s.detail }));
  for (const [i, part] of parts.entries()) {
    progress(i, parts.length, part.length);
    const form = new FormData();
    for (const f of part) form.append("files", f, f.name);
    let body;
    try {
      body = await api(url, { method: "POST", body: form });
    } catch (e) {
      if (e.status !== 422 || !e.body?.skipped?.length) throw e;  // 422: no readable image in this request
      skipped.push(...named(e.body.skipped));
      continue;
    }
    skipped.push(...named(body.skipped));
    onBody(body);
  }
  return skipped;
}

/** Upload files to the open case in as many requests as the limits need; returns {added, skipped}. */
export async function uploadCells(files, progress = () => {}) {
  let added = 0;
  const skipped = await postInBatches(`${caseUrl()}/cells`, files, progress, body => {
    for (const c of body.cells) state.cells.set(String(c.id), c);
    added += body.cells.length;
    if (body.case) state.kase = body.case;
    changed("cells");
  });
  return { added, skipped };
}

/** PATCH a cell's label, only if it is still `seen` on the server: a review made by someone else since
 * (another page, another reviewer) is never overwritten; the cell is reloaded and the error says so. */
async function patchLabel(cellId, label, seen) {
  const body = { label, if_label: seen };
  if (state.reviewer) body.reviewer = state.reviewer;
  try {
    const cell = await api(cellUrl(cellId), { method: "PATCH", json: body });
    state.cells.set(String(cell.id), cell);
    return cell;
  } catch (e) {
    if (e.status === 409) {
      state.cells.set(String(cellId), await api(cellUrl(cellId)));
      state.undo = state.undo.filter(u => u.cellId !== cellId);
      changed("cells");
      await refreshCase();
    }
    throw e;
  }
}

/** Set a cell's reviewed label (null clears the review) and remember how to undo it. */
export async function setLabel(cellId, label) {
  const before = state.cells.get(String(cellId)).label ?? null;
  await patchLabel(cellId, label, before);
  state.undo.push({ cellId, before, after: label });
  changed("cells");
  await refreshCase();
}

/** Undo the last review: the cell gets its previous label back (null included). */
export async function undo() {
  const last = state.undo.pop();
  if (!last) return null;
  try {
    await patchLabel(last.cellId, last.before, last.after);
  } catch (e) {
    if (e.status !== 409) state.undo.push(last);
    throw e;
  }
  changed("cells");
  await refreshCase();
  return last;
}

/** The label a cell counts as: the reviewed one, else the prediction. */
export function finalLabel(cell) {
  return cell.final_label ?? cell.label ?? cell.predicted;
}
