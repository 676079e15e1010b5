// The differential panel: white-cell percentages with 95% CI, NRBC, platelets, exclusions and agreement.

import { $, el, labelName, pct } from "./dom.js";

/** A 95% interval in percent; an open upper end (NRBC per 100 WBC when all cells are NRBC) shows as ∞. */
const ci = pair => (Array.isArray(pair) && pair.length === 2 ? `${pct(pair[0] ?? 0)}–${pair[1] == null ? "∞" : pct(pair[1])}` : "–");

function whiteTable(rows) {
  const body = $("diff-body");
  body.textContent = "";
  const max = Math.max(1, ...rows.map(r => r.percent || 0));
  for (const r of rows) {
    const fill = el("span", { class: "mini-fill" });
    fill.style.width = `${(100 * (r.percent || 0)) / max}%`;
    body.append(el("tr", { "data-class": r.class },
      el("th", { scope: "row", text: labelName(r.class) }),
      el("td", { class: "num", text: String(r.count) }),
      el("td", { class: "num", text: pct(r.percent) }),
      el("td", { class: "num ci", text: ci(r.ci95) }),
      el("td", { class: "mini", "aria-hidden": "true" }, el("span", { class: "mini-bar" }, fill))));
  }
}

function excludedText(excluded) {
  if (!excluded || !excluded.length) return "none";
  return excluded.map(x => `${x.count} ${labelName(x.reason)}`).join(", ");
}

function agreementText(a) {
  if (!a || !a.reviewed) return "no reviewed cells yet";
  return `${a.agreed} of ${a.reviewed} reviewed kept the model's class (${pct(a.percent)}%, 95% CI ${ci(a.ci95)})`;
}

/** Show a case's differential (hidden while no case is open). */
export function renderDifferential(kase) {
  const d = kase && kase.differential;
  $("diff-panel").hidden = !d;
  if (!d) return;
  const white = d.white_cells || [];
  whiteTable(white);
  const nrbc = d.nrbc || {};
  $("diff-wbc").textContent = String(d.wbc_total ?? white.reduce((s, r) => s + r.count, 0));
  $("diff-nrbc").textContent = `${nrbc.count ?? 0} (${pct(nrbc.per_100_wbc)} per 100 WBC, 95% CI ${ci(nrbc.ci95)})`;
  const bySize = d.platelets?.by_size ?? 0;
  $("diff-platelets").textContent = String(d.platelets?.count ?? 0) + (bySize ? ` (${bySize} by size, in fields)` : "");
  $("diff-excluded").textContent = excludedText(d.excluded);
  $("diff-agreement").textContent = agreementText(d.agreement);
  $("diff-summary").textContent = `${d.wbc_total ?? 0} white cells counted; ${d.reviewed ?? 0} of ${d.total ?? 0} `
    + `cells reviewed, ${d.unreviewed ?? 0} unreviewed (counted as predicted).`;
}
