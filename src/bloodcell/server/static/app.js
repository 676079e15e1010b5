// The review page: wires the case bar, the gallery, reviewing, the differential and Grad-CAM.

import { initAdapt, renderAdapt } from "./adapt.js";
import { followHash, initCaseBar, renderCaseSummary } from "./casebar.js";
import { renderDifferential } from "./differential.js";
import { $, api, el, labelName } from "./dom.js";
import { goToBox, renderFields } from "./fields.js";
import { filters, renderGallery, setActions } from "./gallery.js";
import { initGradcam, showGradcam } from "./gradcam.js";
import { initQuick } from "./quick.js";
import { initReview, openMenu, renderLegend } from "./review.js";
import { EXTRA_LABELS, onChange, state } from "./store.js";

const REVIEWER_KEY = "bloodcell.reviewer";

async function loadModel() {
  try {
    const card = await api("/v1/model");
    state.limits = card.limits || state.limits;
    state.classes = card.classes?.length ? card.classes : card.runtime?.classes || [];
    const rt = card.runtime || {};
    $("model-line").textContent = `Model: ${card.name || rt.name || card.architecture} (${rt.backend || "?"}, ${rt.image_size} px)`;
    const limits = state.limits;
    $("limits").textContent = `Up to ${limits.max_files} images and ${limits.max_upload_mb} MB per request`
      + (limits.max_megapixels ? `, ${limits.max_megapixels} megapixels per image` : "")
      + "; larger selections are sent in several requests.";
  } catch (e) {
    $("model-line").textContent = "Model card unavailable: " + e.message;
  }
}

function initFilters() {
  $("filter-label").append(...[...state.classes, ...EXTRA_LABELS].map(c => el("option", { value: c, text: labelName(c) })));
  for (const [id, key] of [["filter-label", "label"], ["filter-flag", "flag"]]) {
    $(id).addEventListener("change", e => { filters[key] = e.target.value; renderGallery(); });
  }
}

function initReviewer() {
  const input = $("reviewer");
  input.value = localStorage.getItem(REVIEWER_KEY) || "";
  state.reviewer = input.value.trim();
  input.addEventListener("input", () => {
    state.reviewer = input.value.trim();
    localStorage.setItem(REVIEWER_KEY, state.reviewer);
  });
}

function render(what) {
  if (what === "case" && state.kase) $("new-case-box").open = false;
  if (what !== "summary") { renderGallery(); renderFields(); }
  renderCaseSummary();
  renderDifferential(state.kase);
  renderAdapt();
  $("undo").disabled = !state.undo.length;
}

async function main() {
  await loadModel();
  initReviewer();
  initFilters();
  renderLegend();
  setActions({ gradcam: showGradcam, menu: openMenu, field: goToBox });
  onChange(render);
  initCaseBar();
  initReview();
  initGradcam();
  initQuick(state.limits);
  initAdapt({ onSwitched: loadModel });
  await followHash();
}

main();
