"""The audit's summary for the terminal: counts first, then each kind of flaw with examples."""

from __future__ import annotations

from bloodcell.data.audit.checks import AuditResult


def summary_text(result: AuditResult, list_limit: int = 10) -> str:
    """A readable multi-line summary of an audit for the terminal."""
    d = result.to_dict()
    lines = _files_and_classes(result, d)
    lines += _skipped_and_duplicates(d, list_limit)
    nd = d["near_duplicates"]
    lines.append(f"Near-duplicates (cell-centred perceptual hash, <= {result.settings.near_threshold} of "
                 f"{result.settings.hash_size ** 2} bits): {len(nd['groups'])} groups, {nd['files']} files")
    lines += ["  " + " ~ ".join(m["id"] for m in g["members"]) for g in nd["groups"][:list_limit]]
    lines += _more(nd["groups"], list_limit)
    lc = d["label_conflicts"]
    n_exact = sum(c["kind"] == "exact" for c in lc)
    lines.append(f"Label conflicts: {len(lc)} groups ({n_exact} exact copies with different labels, "
                 f"{len(lc) - n_exact} near-duplicates; near ones are often one field centred on different cells)")
    for c in lc[:list_limit]:
        lines.append(f"  [{c['kind']}] " + ", ".join(f"{m['id']} ({m['label']})" for m in c["members"]))
    out = d["outliers"]
    if out["computed"]:
        lines.append(f"Outliers (score > {out['threshold']:g}; 1 = typical; k-NN distance in appearance features): "
                     f"{len(out['flagged'])} flagged. Most unusual:")
        for o in out["most_unusual"][:list_limit]:
            lines.append(f"  {o['score']:6.2f}  {o['id']} ({o['label']}): {', '.join(o['why'])}")
    else:
        lines.append("Outliers: not scored (fewer than 20 distinct readable images)")
    fc = d["flagged"]["counts"]
    lines.append(f"Flagged (left out of `bloodcell split` unless --keep-flagged): {d['flagged']['images']} images "
                 f"({fc['unreadable']} unreadable, {fc['label-conflict']} in label conflicts, {fc['outlier']} outliers)")
    return "\n".join(lines)


def _more(items: list, list_limit: int) -> list[str]:
    return [f"  ... {len(items) - list_limit} more in audit.json"] if len(items) > list_limit else []


def _files_and_classes(result: AuditResult, d: dict) -> list[str]:
    ds, f = result.dataset, d["files"]
    lines = [f"Audit of {ds.source} ({ds.kind}) in {result.seconds:.1f} s"]
    if f["on_disk"] is not None:
        state = "all accounted for" if f["accounted"] else "NOT all accounted for"
        lines.append(f"Files: {f['on_disk']:,} on disk, {state}: {f['images']:,} images "
                     f"({f['readable']:,} readable, {f['unreadable']:,} unreadable) + {f['skipped_files']:,} skipped")
    else:
        lines.append(f"Images: {f['images']:,} ({f['readable']:,} readable, {f['unreadable']:,} unreadable); "
                     f"{f['skipped']:,} items skipped")
    total = max(1, f["images"])
    lines.append(f"Classes ({len(d['classes'])}):")
    for c, v in d["classes"].items():
        lines.append(f"  {c:<13}{v['images']:>7,}  {100 * v['images'] / total:5.1f}%")
    sz = d["image_sizes"]
    if sz:
        common = ", ".join(f"{m['width']}x{m['height']} ({m['count']:,})" for m in sz["most_common"][:4])
        lines.append(f"Image sizes: {sz['distinct']} distinct; most common {common}; width {sz['width']['min']}-"
                     f"{sz['width']['max']}, height {sz['height']['min']}-{sz['height']['max']}")
        lines.append(f"Modes: {', '.join(f'{k} ({v:,})' for k, v in d['modes'].items())}; formats: "
                     f"{', '.join(f'{k} ({v:,})' for k, v in d['formats'].items())}")
    return lines


def _skipped_and_duplicates(d: dict, list_limit: int) -> list[str]:
    lines = []
    if d["skipped"]:
        lines.append(f"Skipped ({len(d['skipped'])}):")
        lines += [f"  {p['message']}" for p in d["skipped"][:list_limit]]
        lines += _more(d["skipped"], list_limit)
    lines.append(f"Unreadable: {len(d['unreadable'])}")
    lines += [f"  {u['message']}" for u in d["unreadable"][:list_limit]]
    ex = d["exact_duplicates"]
    lines.append(f"Exact duplicates: {len(ex)} groups, {sum(len(g['members']) for g in ex)} files")
    lines += ["  " + " = ".join(m["id"] for m in g["members"]) for g in ex[:list_limit]]
    lines += _more(ex, list_limit)
    return lines
