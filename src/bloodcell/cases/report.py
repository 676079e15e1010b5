"""A case's printable report: the lab differential with its intervals, NRBC per 100 white cells,
platelets, excluded images, review progress, reviewers and the model, as one HTML page."""

from __future__ import annotations

from html import escape

from bloodcell.cases.store import CaseStore
from bloodcell.core import __version__
from bloodcell.core.classes import DISPLAY_NAMES

CSS = """
body { font: 11pt/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 48em; color: #111; }
h1 { font-size: 16pt; margin-bottom: 0.2em; }
h2 { font-size: 12pt; margin: 1.4em 0 0.4em; border-bottom: 1px solid #999; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.2em 0.6em; border-bottom: 1px solid #ddd; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.2em 1em; }
dt { font-weight: 600; }
.note { white-space: pre-wrap; }
.warn { font-weight: 600; }
footer { margin-top: 2em; font-size: 9pt; color: #555; }
@media print { body { margin: 0; max-width: none; } a { color: inherit; text-decoration: none; } }
@page { margin: 15mm; }
"""


def _ci(ci) -> str:
    if not ci:
        return "–"
    lo = "–" if ci[0] is None else f"{ci[0]:.1f}"
    hi = "∞" if ci[1] is None else f"{ci[1]:.1f}"
    return f"{lo}–{hi}"


def _num(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _when(iso: str) -> str:
    """``2026-01-02T03:04:05.678Z`` as ``2026-01-02 03:04:05 UTC``."""
    return iso[:19].replace("T", " ") + " UTC" if iso.endswith("Z") else iso


def _white_rows(d: dict) -> list[str]:
    rows = [f"<tr><td>{escape(DISPLAY_NAMES.get(r['class'], r['class']))}</td><td class=n>{r['count']}</td>"
            f"<td class=n>{_num(r['percent'])}</td><td class=n>{_ci(r['ci95'])}</td></tr>" for r in d["white_cells"]]
    rows.append(f"<tr><th>White cells counted</th><td class=n>{d['wbc_total']}</td><td class=n>"
                f"{'100.0' if d['wbc_total'] else '–'}</td><td></td></tr>")
    return rows


def _other_rows(d: dict) -> list[str]:
    nrbc = d["nrbc"]
    rows = [f"<tr><td>NRBC / 100 WBC</td><td class=n>{nrbc['count']}</td><td class=n>{_num(nrbc['per_100_wbc'])}</td>"
            f"<td class=n>{_ci(nrbc['ci95'])}</td></tr>",
            f"<tr><td>Platelets (counted apart)</td><td class=n>{d['platelets']['count']}</td><td></td><td></td></tr>"]
    rows += [f"<tr><td>Excluded: {escape(e['reason'].replace('_', ' '))}</td><td class=n>{e['count']}</td>"
             "<td></td><td></td></tr>" for e in d["excluded"]]
    return rows


def _review(case: dict, events: list[dict]) -> str:
    d = case["differential"]
    reviewers = sorted({e["who"] for e in events if e["what"] == "label" and e["who"]})
    times = [e["at"] for e in events if e["what"] == "label"]
    a = d["agreement"]
    agree = (f"{a['agreed']} of {a['reviewed']} ({_num(a['percent'])}%, 95% CI {_ci(a['ci95'])})"
             if a["reviewed"] else "–")
    short = case["n_cells"] < case["target"]
    return (f"<dl><dt>Cells</dt><dd>{case['n_cells']} of target {case['target']}"
            f"{' <span class=warn>(target not reached)</span>' if short else ''}</dd>"
            f"<dt>Reviewed</dt><dd>{d['reviewed']}</dd>"
            f"<dt>Unreviewed</dt><dd>{d['unreviewed']}"
            f"{' <span class=warn>(counted in the model class)</span>' if d['unreviewed'] else ''}</dd>"
            f"<dt>Review agrees with the model</dt><dd>{agree}</dd>"
            f"<dt>Reviewer(s)</dt><dd>{escape(', '.join(reviewers)) or '–'}</dd>"
            f"<dt>Reviewed between</dt><dd>{escape(_when(min(times)) + ' and ' + _when(max(times))) if times else '–'}</dd></dl>")


def case_report(store: CaseStore, case_id: int, stylesheet: str | None = None) -> str:
    """The report page of a case; ``stylesheet`` links a style sheet instead of the inline one."""
    case = store.case(case_id)
    d = case["differential"]
    events = store.events(case_id)
    models = store.models(case_id)
    style = (f'<link rel="stylesheet" href="{escape(stylesheet)}">' if stylesheet else f"<style>{CSS}</style>")
    head = "<tr><th>Cell</th><th class=n>Count</th><th class=n>%</th><th class=n>95% CI (%)</th></tr>"
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Case {case['id']} – {escape(case['accession'])}</title>", style, "</head><body>",
        f"<h1>Differential – case {case['id']}</h1>",
        f"<dl><dt>Accession</dt><dd>{escape(case['accession'])}</dd><dt>Created</dt><dd>{escape(_when(case['created']))}</dd>"
        f"<dt>Last change</dt><dd>{escape(_when(case['updated']))}</dd>"
        f"<dt>Note</dt><dd class=note>{escape(case['note']) or '–'}</dd></dl>",
        "<h2>White-cell differential</h2>", f"<table>{head}{''.join(_white_rows(d))}</table>",
        "<h2>Other cells and excluded images</h2>", f"<table>{head.replace('%</th>', 'Value</th>', 1)}"
        f"{''.join(_other_rows(d))}</table>",
        "<h2>Review</h2>", _review(case, events),
        "<h2>Model</h2>", f"<p>{escape('; '.join(models)) or '–'}</p>",
        f"<footer>Intervals are 95% Wilson score intervals. Unreviewed images count in the model's class; "
        f"unreviewed images the model flags as not a blood cell are excluded. bloodcell {escape(__version__)}."
        "</footer>", "</body></html>", ""])
