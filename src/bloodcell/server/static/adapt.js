// Adapting the model to the open case's reviewed cells: a background job on the server, its progress,
// and switching the service to the adapted model once it is done.

import { $, api, clearError, labelName, showError } from "./dom.js";
import { state } from "./store.js";

const JOB_KEY = id => `bloodcell.adapt.${id}`;   // the case's latest job, so a reload keeps following it
const POLL_MS = 1000;
let polling = null;     // {jobId, timer}
let shownCase = null;   // the case whose adaptation the panel shows
let onSwitched = () => {};

/** Reviewed cells with a class of the model, per class. */
function reviewedByClass() {
  const counts = new Map();
  for (const c of state.cells.values()) {
    if (c.label && state.classes.includes(c.label)) counts.set(c.label, (counts.get(c.label) || 0) + 1);
  }
  return counts;
}

/** The line saying what the adaptation would learn from, and whether it can start. */
export function renderAdapt() {
  if (!state.kase) return;
  showCase();
  const counts = reviewedByClass();
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  const parts = [...counts].map(([label, n]) => `${labelName(label)} ${n}`).join(", ");
  $("adapt-cells").textContent = total
    ? `${total} reviewed cell${total === 1 ? "" : "s"} with a class: ${parts}.`
    : "No cell is reviewed with a class yet: review some cells first.";
  $("adapt-start").disabled = counts.size < 2 || !!polling;
  if (counts.size === 1) $("adapt-cells").textContent += " Adapting needs cells of at least two classes.";
}

function show(view) {
  const bar = $("adapt-progress");
  bar.hidden = view.state === "done" || view.state === "failed";
  bar.value = view.progress;
  const pct = Math.round(100 * view.progress);
  const text = {
    queued: `Waiting: ${view.message}`,
    running: `Adapting (${pct}%): ${view.message}`,
    done: `Done: ${view.message}. Adapted model: ${view.model_dir}`,
    failed: `Adaptation failed: ${view.message}`,
  }[view.state];
  $("adapt-status").textContent = view.serving
    ? `Done: the service serves this adapted model (${view.model_dir}).` : text;
  $("adapt-switch").hidden = view.state !== "done" || !view.model_dir || view.serving;
  $("adapt-switch").dataset.modelDir = view.model_dir || "";
}

function stop() {
  if (polling) clearTimeout(polling.timer);
  polling = null;
}

const current = jobId => polling && polling.jobId === jobId;  // the panel still follows this job

async function poll(caseId, jobId) {
  if (!current(jobId)) return;
  let view;
  try {
    view = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
  } catch (e) {
    if (!current(jobId)) return;
    if (e.status === 404) {  // the service restarted: its jobs are gone
      localStorage.removeItem(JOB_KEY(caseId));
      stop();
      $("adapt-status").textContent = "The service no longer knows the last adaptation (it restarted); start it again.";
      $("adapt-progress").hidden = true;
      renderAdapt();
      return;
    }
    polling.timer = setTimeout(() => poll(caseId, jobId), POLL_MS * 3);
    return;
  }
  if (!current(jobId)) return;  // another case was opened meanwhile
  show(view);
  if (view.state === "done" || view.state === "failed") {
    stop();
    renderAdapt();
    return;
  }
  polling.timer = setTimeout(() => poll(caseId, jobId), POLL_MS);
}

function follow(caseId, jobId) {
  stop();
  polling = { jobId, timer: null };
  $("adapt-start").disabled = true;
  poll(caseId, jobId);
}

/** When another case is opened: clear the panel, and follow that case's last job if it has one. */
function showCase() {
  if (shownCase === state.caseId) return;
  shownCase = state.caseId;
  stop();
  $("adapt-status").textContent = "";
  $("adapt-progress").hidden = true;
  $("adapt-switch").hidden = true;
  const jobId = localStorage.getItem(JOB_KEY(shownCase));
  if (jobId) {
    $("adapt-box").open = true;
    follow(shownCase, jobId);
  }
}

async function start() {
  clearError();
  const caseId = state.caseId;
  try {
    const view = await api(`/v1/cases/${encodeURIComponent(caseId)}/adapt`,
      { method: "POST", json: { method: $("adapt-method").value } });
    localStorage.setItem(JOB_KEY(caseId), view.id);
    show(view);
    follow(caseId, view.id);
  } catch (e) {
    showError(`Adaptation not started: ${e.message}`);
  }
}

async function switchModel() {
  clearError();
  const button = $("adapt-switch");
  button.disabled = true;
  try {
    const body = await api("/v1/model/switch", { method: "POST", json: { model_dir: button.dataset.modelDir } });
    $("adapt-status").textContent = `The service now serves ${body.model.name}; new uploads are classified by it.`;
    button.hidden = true;
    await onSwitched();
  } catch (e) {
    showError(e.message);
  } finally {
    button.disabled = false;
  }
}

export function initAdapt(options = {}) {
  onSwitched = options.onSwitched || onSwitched;
  $("adapt-start").addEventListener("click", start);
  $("adapt-switch").addEventListener("click", switchModel);
}
