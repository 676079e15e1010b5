"""Audit a dataset: account for every file and find what would mislead training.

:func:`audit_dataset` measures every image once (cached by content, see
:mod:`bloodcell.data.audit.facts`) and reports

* per-class counts and image sizes, modes and formats;
* files that cannot be decoded, named, and everything the reader skipped;
* exact duplicates (same bytes) and near-duplicates (cell-centred perceptual
  hashes at most ``near_threshold`` bits apart), as groups;
* label conflicts: duplicate groups whose members carry different labels;
* outliers, scored as in :mod:`bloodcell.data.audit.outliers`.

Unreadable images, members of label conflicts and outliers above the
threshold are *flagged*; :mod:`bloodcell.data.split` leaves flagged images out
and keeps each duplicate group within one split. Nothing in the source is
modified.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bloodcell import __version__
from bloodcell.core.errors import ConfigError
from bloodcell.data.audit.duplicates import components, hashes_to_words, near_pairs
from bloodcell.data.audit.facts import collect_facts
from bloodcell.data.audit.features import FEATURE_NAMES
from bloodcell.data.audit.outliers import (
    DEFAULT_NEIGHBORS,
    DEFAULT_THRESHOLD,
    outlier_scores,
    robust_standardize,
    strongest_features,
)
from bloodcell.data.pixels import _NAME
from bloodcell.data.readers.dataset import Dataset
from bloodcell.data.readers.folder import count_files

FORMAT = "bloodcell-audit/1"

FLAG_UNREADABLE = "unreadable"
FLAG_CONFLICT = "label-conflict"
FLAG_OUTLIER = "outlier"

#: Kinds of reader problems that stand for files on disk left out of the dataset.
SKIPPED_FILE_KINDS = ("hidden", "stray", "not-image", "unknown-class")

OUTLIER_METHOD = (
    "k-nearest-neighbour distance in robustly standardized appearance features "
    f"({', '.join(FEATURE_NAMES)}; each minus its median over 1.4826 x MAD), averaged over the k nearest "
    "distinct images and divided by the dataset median, so 1 is typical and 6 means six times further "
    "from its nearest neighbours than a typical image."
)


@dataclass(frozen=True)
class AuditSettings:
    """Knobs of the audit.

    Parameters
    ----------
    hash_size : int
        Side of the perceptual hash; the hash has ``hash_size**2`` bits.
    near_threshold : int
        Images whose hashes differ in at most this many bits are near-duplicates.
    outlier_threshold : float
        Outlier scores above this are flagged.
    outlier_neighbors : int
        ``k`` of the k-nearest-neighbour outlier score.
    """

    hash_size: int = 16
    near_threshold: int = 48
    outlier_threshold: float = DEFAULT_THRESHOLD
    outlier_neighbors: int = DEFAULT_NEIGHBORS

    def __post_init__(self):
        if not 4 <= self.hash_size <= 32:
            raise ConfigError(f"hash_size must be from 4 to 32, got {self.hash_size}.")
        if not 0 <= self.near_threshold < self.hash_size ** 2 // 2:
            raise ConfigError(
                f"near_threshold must be from 0 to {self.hash_size ** 2 // 2 - 1} bits for a "
                f"{self.hash_size ** 2}-bit hash, got {self.near_threshold}."
            )
        if self.outlier_threshold <= 0 or self.outlier_neighbors < 1:
            raise ConfigError(
                f"outlier_threshold must be > 0 and outlier_neighbors >= 1, got {self.outlier_threshold} "
                f"and {self.outlier_neighbors}."
            )


@dataclass
class AuditResult:
    """Everything :func:`audit_dataset` found, per sample and per group."""

    dataset: Dataset
    settings: AuditSettings
    keys: list[str]
    facts: list[dict]
    unreadable: dict[int, str]
    exact_groups: list[list[int]]
    near_groups: list[list[int]]
    group_ids: list[str]
    conflicts: list[dict]
    scores: np.ndarray | None
    strongest: dict[int, list[str]]
    flags: list[list[str]]
    files_on_disk: int | None
    seconds: float
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    written: dict[str, Path] = field(default_factory=dict)

    # ------------------------------------------------------------- queries
    def flagged(self) -> list[int]:
        """Indices of flagged samples."""
        return [i for i, f in enumerate(self.flags) if f]

    def flag_counts(self) -> dict[str, int]:
        c = Counter(flag for f in self.flags for flag in f)
        return {k: c[k] for k in (FLAG_UNREADABLE, FLAG_CONFLICT, FLAG_OUTLIER)}

    def readable(self) -> list[int]:
        return [i for i in range(len(self.keys)) if i not in self.unreadable]

    def most_unusual(self, n: int = 24) -> list[int]:
        """Sample indices with the highest outlier scores, one per distinct content."""
        if self.scores is None:
            return []
        seen, out = set(), []
        for i in np.argsort(-np.nan_to_num(self.scores, nan=-1.0), kind="stable"):
            if np.isnan(self.scores[i]) or self.keys[i] in seen:
                continue
            seen.add(self.keys[i])
            out.append(int(i))
            if len(out) == n:
                break
        return out

    def size_stats(self) -> dict:
        ws = np.array([f["width"] for f in self.facts if "width" in f])
        hs = np.array([f["height"] for f in self.facts if "height" in f])
        if not len(ws):
            return {}
        common = Counter(zip(ws.tolist(), hs.tolist())).most_common(10)
        return {
            "width": {"min": int(ws.min()), "median": float(np.median(ws)), "max": int(ws.max())},
            "height": {"min": int(hs.min()), "median": float(np.median(hs)), "max": int(hs.max())},
            "most_common": [{"width": w, "height": h, "count": c} for (w, h), c in common],
            "distinct": len(set(zip(ws.tolist(), hs.tolist()))),
        }

    # ------------------------------------------------------------- output
    def _sid(self, i: int) -> str:
        return self.dataset.samples[i].source_id

    def _member(self, i: int) -> dict:
        return {"id": self._sid(i), "label": self.dataset.samples[i].label}

    def to_dict(self) -> dict:
        ds = self.dataset
        counts = ds.class_counts()
        readable_counts = Counter(ds.samples[i].label for i in self.readable())
        kept = Counter(ds.samples[i].label for i, f in enumerate(self.flags) if not f)
        return {
            "format": FORMAT,
            "bloodcell_version": __version__,
            "created": self.created,
            "source": str(ds.source.resolve()),
            "kind": ds.kind,
            "seconds": round(self.seconds, 2),
            "settings": asdict(self.settings),
            "files": {
                "on_disk": self.files_on_disk,
                "images": len(ds),
                "readable": len(ds) - len(self.unreadable),
                "unreadable": len(self.unreadable),
                "skipped": len(ds.problems),
                "skipped_files": self.skipped_files(),
                "accounted": self.accounted(),
            },
            "classes": {c: {"images": counts[c], "readable": readable_counts[c], "unflagged": kept[c]} for c in counts},
            "image_sizes": self.size_stats(),
            "modes": dict(Counter(f.get("mode", "?") for f in self.facts).most_common()),
            "formats": dict(Counter(f.get("format", "?") for f in self.facts).most_common()),
            "skipped": [p.to_dict() for p in ds.problems],
            "unreadable": [{"id": self._sid(i), "label": ds.samples[i].label, "message": m}
                           for i, m in sorted(self.unreadable.items())],
            "exact_duplicates": [{"sha256": self.keys[g[0]], "members": [self._member(i) for i in g]}
                                 for g in self.exact_groups],
            "near_duplicates": {
                "method": f"cell-centred DCT perceptual hash ({self.settings.hash_size ** 2} bits), Hamming "
                          f"distance <= {self.settings.near_threshold}, single-linkage groups",
                "groups": [{"group": self.group_ids[g[0]], "members": [self._member(i) for i in g]}
                           for g in self.near_groups],
                "files": sum(len(g) for g in self.near_groups),
            },
            "label_conflicts": self.conflicts,
            "outliers": {
                "method": OUTLIER_METHOD,
                "threshold": self.settings.outlier_threshold,
                "neighbors": self.settings.outlier_neighbors,
                "computed": self.scores is not None,
                "flagged": [self._outlier_row(i) for i in range(len(self.keys)) if FLAG_OUTLIER in self.flags[i]],
                "most_unusual": [self._outlier_row(i) for i in self.most_unusual(24)],
            },
            "flagged": {"counts": self.flag_counts(), "images": len(self.flagged())},
            "images": [self._image_row(i) for i in range(len(self.keys))],
        }

    def _outlier_row(self, i: int) -> dict:
        return {**self._member(i), "score": round(float(self.scores[i]), 3), "why": self.strongest.get(i, [])}

    def _image_row(self, i: int) -> dict:
        s, f = self.dataset.samples[i], self.facts[i]
        score = None if self.scores is None or np.isnan(self.scores[i]) else round(float(self.scores[i]), 3)
        return {"id": s.source_id, "label": s.label, "split": s.split, "content": self.keys[i],
                "group": self.group_ids[i], "width": f.get("width"), "height": f.get("height"),
                "outlier_score": score, "flags": self.flags[i]}

    def accounted(self) -> bool | None:
        """For folders: do images plus skipped files add up to every file on disk?"""
        if self.files_on_disk is None:
            return None
        return len(self.dataset) + self.skipped_files() == self.files_on_disk

    def skipped_files(self) -> int:
        """Files the reader left out (hidden, stray, not images, in unknown class folders), counting the files
        inside left-out folders."""
        return sum(p.files for p in self.dataset.problems if p.kind in SKIPPED_FILE_KINDS)


def audit_dataset(ds: Dataset, settings: AuditSettings | None = None, workers: int | None = None,
                  progress: bool = True) -> AuditResult:
    """Audit ``ds``; see the module documentation for what is measured.

    Parameters
    ----------
    ds : Dataset
    settings : AuditSettings, optional
    workers : int, optional
        Threads measuring images; default :func:`bloodcell.core.settings.default_workers`.
    progress : bool
        Progress bars on stderr.

    Returns
    -------
    AuditResult
    """
    settings = settings or AuditSettings()
    t0 = time.perf_counter()
    n = len(ds)
    keys = ds.content_keys(progress=progress)
    sources = [(k, s.path if s.path is not None else ds.arrays[s.row]) for k, s in zip(keys, ds.samples)]
    facts_by_key = collect_facts(sources, hash_size=settings.hash_size, workers=workers, progress=progress)
    facts = [facts_by_key[k] for k in keys]
    unreadable = {i: facts[i]["error"].replace(_NAME, str(ds.samples[i].path or ds.samples[i].source_id))
                  for i in range(n) if "error" in facts[i]}
    by_key: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    exact_groups = [g for g in by_key.values() if len(g) > 1]
    readable_keys = [k for k in by_key if "error" not in facts_by_key[k]]
    group_ids, near_groups = _near_groups(keys, by_key, readable_keys, facts_by_key, settings)
    flags: list[list[str]] = [[] for _ in range(n)]
    for i in unreadable:
        flags[i].append(FLAG_UNREADABLE)
    conflicts = _conflicts(ds, keys, group_ids, flags)
    outliers = _Outliers(keys, readable_keys, facts_by_key, settings, flags)
    files_on_disk = count_files(ds.source) if ds.kind == "folder" else None
    result = AuditResult(ds, settings, keys, facts, unreadable, exact_groups, near_groups, group_ids, conflicts,
                         outliers.scores, outliers.strongest, flags, files_on_disk, 0.0)
    outliers.explain(result.most_unusual(24))
    result.seconds = time.perf_counter() - t0
    return result


def _near_groups(keys: list[str], by_key: dict[str, list[int]], readable_keys: list[str], facts_by_key: dict,
                 settings: AuditSettings) -> tuple[list[str], list[list[int]]]:
    """Group id of every sample, and the near-duplicate groups (sample indices) of more than one content."""
    words = hashes_to_words([facts_by_key[k]["phash"] for k in readable_keys], settings.hash_size ** 2)
    pairs = near_pairs(words, settings.near_threshold)
    comp = components(len(readable_keys), [(a, b) for a, b, _ in pairs])
    comp_members: dict[int, list[int]] = {}
    for u, c in enumerate(comp):
        comp_members.setdefault(int(c), []).append(u)
    group_of_key = {}
    for members in comp_members.values():
        gid = "g" + min(readable_keys[u] for u in members)[:12]
        for u in members:
            group_of_key[readable_keys[u]] = gid
    group_ids = [group_of_key.get(k, "g" + k[:12]) for k in keys]
    near_groups = [sorted(i for u in members for i in by_key[readable_keys[u]])
                   for members in comp_members.values() if len(members) > 1]
    near_groups.sort(key=lambda g: g[0])
    return group_ids, near_groups


def _conflicts(ds: Dataset, keys: list[str], group_ids: list[str], flags: list[list[str]]) -> list[dict]:
    """Groups whose members carry different labels; their members are flagged."""
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(group_ids):
        by_group.setdefault(g, []).append(i)
    conflicts = []
    for g, members in by_group.items():
        labels = {ds.samples[i].label for i in members if ds.samples[i].label is not None}
        if len(members) > 1 and len(labels) > 1:
            kind = "exact" if len({keys[i] for i in members}) == 1 else "near"
            conflicts.append({"group": g, "kind": kind, "labels": sorted(labels),
                              "members": [{"id": ds.samples[i].source_id, "label": ds.samples[i].label,
                                           "content": keys[i][:12]} for i in members]})
            for i in members:
                flags[i].append(FLAG_CONFLICT)
    conflicts.sort(key=lambda c: (c["kind"] != "exact", c["members"][0]["id"]))
    return conflicts


class _Outliers:
    """Outlier scores per sample (``None`` when too few images), flags above the threshold, and why."""

    def __init__(self, keys: list[str], readable_keys: list[str], facts_by_key: dict, settings: AuditSettings,
                 flags: list[list[str]]):
        self.keys = keys
        self.scores: np.ndarray | None = None
        self.strongest: dict[int, list[str]] = {}
        if not readable_keys:
            return
        feats = np.array([facts_by_key[k]["features"] for k in readable_keys], np.float64)
        uscores = outlier_scores(feats, settings.outlier_neighbors)
        if uscores is None:
            return
        self.z = robust_standardize(feats)
        self.pos = {k: u for u, k in enumerate(readable_keys)}
        self.scores = np.full(len(keys), np.nan)
        for i, k in enumerate(keys):
            if k in self.pos:
                score = uscores[self.pos[k]]
                self.scores[i] = score
                if score > min(settings.outlier_threshold, 3.0):
                    self.strongest[i] = strongest_features(self.z[self.pos[k]], FEATURE_NAMES)
                if score > settings.outlier_threshold:
                    flags[i].append(FLAG_OUTLIER)

    def explain(self, indices: list[int]) -> None:
        """Name the strongest features of ``indices`` too (the most unusual images, shown in reports)."""
        if self.scores is None:
            return
        for i in indices:
            self.strongest.setdefault(i, strongest_features(self.z[self.pos[self.keys[i]]], FEATURE_NAMES))
