"""Stratified, group-aware train/val/test splits written as a CSV manifest.

Every duplicate group the audit finds (exact copies and near-duplicates,
:mod:`bloodcell.data.audit.checks`) goes to one split as a whole, so no image has a
copy, or a second photograph of the same field, on the other side. Groups are
assigned class by class, largest first, each to the split furthest below its
target size, which hits the requested fractions per class to within one group.
The order is drawn from a seeded generator: the same data, fractions and seed
give the same manifest. Images the audit flags (unreadable, in a label
conflict, outliers above the threshold) are left out unless ``keep_flagged``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bloodcell.core.classes import CLASSES
from bloodcell.core.errors import ConfigError, DataError
from bloodcell.core.files import atomic_write_json, check_writable_file
from bloodcell.core.settings import check_workers
from bloodcell.data.audit.checks import AuditResult, AuditSettings, audit_dataset
from bloodcell.data.readers.dataset import SPLITS, Dataset
from bloodcell.data.readers.manifest import manifest_path_for, write_manifest
from bloodcell.data.readers.open import open_dataset

COLUMNS = ["path", "label", "split", "source_id", "sha256", "group", "flags"]


@dataclass
class SplitResult:
    """Which split each sample went to (``None`` for excluded ones)."""

    audit: AuditResult
    splits: list[str | None]
    fractions: tuple[float, float, float]
    seed: int
    keep_flagged: bool
    written: dict[str, Path] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{class: {"train": n, "val": n, "test": n, "excluded": n}}`` in class order."""
        ds = self.audit.dataset
        c = Counter((s.label, sp or "excluded") for s, sp in zip(ds.samples, self.splits))
        return {k: {sp: c[(k, sp)] for sp in (*SPLITS, "excluded")} for k in ds.class_names}

    def straddling_groups(self) -> list[str]:
        """Groups whose members ended up in more than one split (always empty)."""
        seen: dict[str, set] = {}
        for g, sp in zip(self.audit.group_ids, self.splits):
            if sp is not None:
                seen.setdefault(g, set()).add(sp)
        return sorted(g for g, s in seen.items() if len(s) > 1)

    def rows(self, manifest: Path) -> list[dict]:
        ds, a = self.audit.dataset, self.audit
        return [{"path": manifest_path_for(s.path, manifest), "label": s.label or "", "split": sp,
                 "source_id": s.source_id, "sha256": a.keys[i], "group": a.group_ids[i],
                 "flags": ";".join(a.flags[i])}
                for i, (s, sp) in enumerate(zip(ds.samples, self.splits)) if sp is not None]

    def excluded_reasons(self) -> Counter:
        """How many excluded images carry each flag."""
        return Counter(f for i, sp in enumerate(self.splits) if sp is None for f in self.audit.flags[i])

    def excluded_rows(self, manifest: Path) -> list[dict]:
        ds, a = self.audit.dataset, self.audit
        return [{"path": manifest_path_for(s.path, manifest), "label": s.label or "", "source_id": s.source_id,
                 "reason": ";".join(a.flags[i]),
                 "message": a.unreadable.get(i, "")}
                for i, (s, sp) in enumerate(zip(ds.samples, self.splits)) if sp is None]


def check_fractions(val: float, test: float) -> tuple[float, float, float]:
    """``(train, val, test)`` fractions from the val and test fractions."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(
            f"val and test fractions must each be in [0, 1) and leave room for training, got val={val}, "
            f"test={test}. Example: --val 0.1 --test 0.2 for a 70/10/20 split."
        )
    return (1.0 - val - test, float(val), float(test))


def assign_groups(group_labels: dict[str, str], group_sizes: dict[str, int],
                  fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Split name for each group: per class, largest groups first, each to the split most below target."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    for g in sorted(group_labels):
        by_class.setdefault(group_labels[g], []).append(g)
    out: dict[str, str] = {}
    order = {c: i for i, c in enumerate(CLASSES)}
    for label in sorted(by_class, key=lambda c: (order.get(c, len(order)), c)):
        groups = by_class[label]
        perm = rng.permutation(len(groups))
        groups = [groups[i] for i in perm]
        groups.sort(key=lambda g: -group_sizes[g])
        total = sum(group_sizes[g] for g in groups)
        target = np.array(fractions) * total
        have = np.zeros(3)
        for g in groups:
            deficit = target - have
            deficit[np.array(fractions) == 0] = -np.inf
            k = int(np.argmax(deficit))
            out[g] = SPLITS[k]
            have[k] += group_sizes[g]
    return out


def split_dataset(ds: Dataset, val: float = 0.1, test: float = 0.2, seed: int = 0, keep_flagged: bool = False,
                  audit: AuditResult | None = None, settings: AuditSettings | None = None,
                  workers: int | None = None, progress: bool = True) -> SplitResult:
    """Assign every sample of ``ds`` to train/val/test (or exclude it); see the module documentation.

    Parameters
    ----------
    ds : Dataset
        A dataset of image files (class folders or a manifest).
    val, test : float
        Fractions of each class for validation and test; training gets the rest.
    seed : int
        Seed of the assignment order.
    keep_flagged : bool
        Keep images the audit flags instead of leaving them out.
    audit : AuditResult, optional
        A finished audit of ``ds``; run (from cached measurements) when omitted.
    settings : AuditSettings, optional
        Audit settings when the audit is run here.

    Raises
    ------
    DataError
        For array sources (.npz), unlabelled images, or nothing left to split.
    """
    fractions = check_fractions(val, test)
    if ds.arrays is not None:
        raise DataError(
            f"{ds.source}: bloodcell split writes a manifest of image files, and this source holds arrays. "
            "MedMNIST-style .npz files carry their own train/val/test split (load_arrays(..., split='train'))."
        )
    unlabelled = [s.source_id for s in ds.samples if s.label is None]
    if unlabelled:
        raise DataError(f"{ds.source}: {len(unlabelled)} image(s) have no label (e.g. {unlabelled[0]}); "
                        "a stratified split needs every image labelled.")
    audit = audit or audit_dataset(ds, settings, workers=workers, progress=progress)
    if audit.dataset is not ds and [s.source_id for s in audit.dataset.samples] != [s.source_id for s in ds.samples]:
        raise DataError(f"{ds.source}: the audit given was made for another dataset ({audit.dataset.source}). "
                        "Pass the audit of this dataset, or none to run it here.")
    use = [i for i in range(len(ds)) if keep_flagged and i not in audit.unreadable or not audit.flags[i]]
    if not use:
        raise DataError(f"{ds.source}: every image is flagged by the audit; nothing to split "
                        "(see `bloodcell audit`, or pass --keep-flagged).")
    members: dict[str, list[int]] = {}
    for i in use:
        members.setdefault(audit.group_ids[i], []).append(i)
    group_labels = {g: Counter(ds.samples[i].label for i in m).most_common(1)[0][0] for g, m in members.items()}
    group_sizes = {g: len(m) for g, m in members.items()}
    where = assign_groups(group_labels, group_sizes, fractions, seed)
    splits: list[str | None] = [None] * len(ds)
    for g, m in members.items():
        for i in m:
            splits[i] = where[g]
    result = SplitResult(audit, splits, fractions, seed, keep_flagged)
    straddling = result.straddling_groups()
    if straddling:
        raise RuntimeError(f"duplicate groups {straddling[:5]} ended up in more than one split; please report this.")
    return result


def write_split(result: SplitResult, manifest: Path) -> dict[str, Path]:
    """Write the manifest, the list of excluded images and a JSON record of the settings."""
    manifest = Path(manifest)
    written = {"manifest": write_manifest(manifest, result.rows(manifest), COLUMNS)}
    excluded = result.excluded_rows(manifest)
    ex_path = manifest.with_name(manifest.stem + ".excluded.csv")
    if excluded:
        written["excluded"] = write_manifest(ex_path, excluded, ["path", "label", "source_id", "reason", "message"])
    elif ex_path.exists():
        ex_path.unlink()
    a = result.audit
    info = {
        "source": str(a.dataset.source.resolve()),
        "fractions": dict(zip(SPLITS, result.fractions)),
        "seed": result.seed,
        "keep_flagged": result.keep_flagged,
        "audit_settings": a.settings.__dict__,
        "counts": result.counts(),
        "excluded": len(excluded),
        "manifest": manifest.name,
    }
    written["info"] = manifest.with_name(manifest.stem + ".json")
    atomic_write_json(written["info"], info)
    return written


def counts_table(result: SplitResult) -> str:
    """Per-class counts as an aligned text table."""
    counts = result.counts()
    cols = (*SPLITS, "excluded")
    lines = [f"{'class':<13}" + "".join(f"{c:>10}" for c in cols) + f"{'total':>10}"]
    totals = Counter()
    for label, row in counts.items():
        totals.update(row)
        lines.append(f"{label:<13}" + "".join(f"{row[c]:>10,}" for c in cols) + f"{sum(row.values()):>10,}")
    lines.append(f"{'total':<13}" + "".join(f"{totals[c]:>10,}" for c in cols) + f"{sum(totals.values()):>10,}")
    return "\n".join(lines)


def manifest_digest(path: Path) -> str:
    """SHA-256 of a manifest file (recorded with models trained on it)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split(data, out="split.csv", val: float = 0.1, test: float = 0.2, seed: int = 0, keep_flagged: bool = False,
          near_threshold: int = AuditSettings.near_threshold, outlier_threshold: float = AuditSettings.outlier_threshold,
          skip_unknown: bool = False, workers: int | None = None, quiet: bool = False) -> SplitResult:
    """Split a dataset into train/val/test and write the manifest ``out`` (``bloodcell split``).

    Parameters
    ----------
    data : str or Path
        Class-folder dataset or CSV manifest.
    out : str or Path
        Manifest to write; ``<stem>.excluded.csv`` and ``<stem>.json`` are written beside it.
    val, test : float
        Fractions of each class for validation and test; training gets the rest.
    seed : int
        Seed of the assignment.
    keep_flagged : bool
        Keep images the audit flags (label conflicts, outliers); unreadable ones are always left out.
    near_threshold : int
        Near-duplicate threshold in hash bits.
    outlier_threshold : float
        Outlier score above which images are left out.
    skip_unknown : bool
        Leave out (and report) folders that are not class names.
    workers : int, optional
        Decoding threads; default ``BLOODCELL_WORKERS`` or the CPU count.
    quiet : bool
        No progress bars.

    Returns
    -------
    SplitResult
        ``written`` maps ``"manifest"``, ``"info"`` and (when images were left
        out) ``"excluded"`` to the files written.

    Raises
    ------
    ConfigError
        For fractions out of range or an ``out`` that cannot be written (checked before the work).
    DataError
        When the dataset cannot be read or split.
    """
    check_fractions(val, test)
    check_workers(workers)
    settings = AuditSettings(near_threshold=near_threshold, outlier_threshold=outlier_threshold)
    check_writable_file(out, what="split manifest")
    ds = open_dataset(data, skip_unknown=skip_unknown, skip_unknown_hint=True)
    result = split_dataset(ds, val=val, test=test, seed=seed, keep_flagged=keep_flagged, settings=settings,
                           workers=workers, progress=not quiet)
    result.written = write_split(result, out)
    return result


__all__ = ["COLUMNS", "SplitResult", "assign_groups", "check_fractions", "counts_table", "split", "split_dataset",
           "write_split", "manifest_digest"]
