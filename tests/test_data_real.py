"""The data layer on the real PBC release: the CLI on a slice, and a split of the full dataset."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from bloodcell import CLASSES, PreprocessConfig
from bloodcell.core.preprocess import load_prepared

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SRC = str(REPO / "src")
PER_CLASS = 20
#: Known flaws of the release, included in the slice when present.
PLANTED = {
    "exact": ("basophil/BA_20201.jpg", "basophil/BA_809918.jpg"),
    "conflict": ("eosinophil/EO_225902.jpg", "neutrophil/BNE_191112.jpg"),
    "near": ("eosinophil/EO_464387.jpg", "eosinophil/EO_800344.jpg"),
    "hidden": ("neutrophil/.DS_169665.jpg",),
}


def _cli(*args, env_extra=None, cwd=None):
    env = {**os.environ, "PYTHONPATH": SRC, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bloodcell", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=600)


@pytest.fixture(scope="module")
def real_slice(real_data, tmp_path_factory):
    """Symlinks to the first 20 images of each class plus the release's known flaws."""
    root = tmp_path_factory.mktemp("pbc_slice") / "pbc"
    linked = []
    for c in sorted(p.name for p in real_data.iterdir() if p.is_dir()):
        (root / c).mkdir(parents=True)
        names = sorted(n for n in os.listdir(real_data / c) if not n.startswith("."))[:PER_CLASS]
        linked += [f"{c}/{n}" for n in names]
    linked += [rel for rels in PLANTED.values() for rel in rels if (real_data / rel).exists()]
    for rel in dict.fromkeys(linked):
        (root / rel).symlink_to(real_data / rel)
    return root


def test_audit_cli_on_real_slice(real_slice, real_data, tmp_path):
    out = tmp_path / "audit"
    proc = _cli("audit", str(real_slice), "-o", str(out), "--quiet", env_extra={"BLOODCELL_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    d = json.loads((out / "audit.json").read_text())
    files = d["files"]
    n_links = sum(1 for p in real_slice.rglob("*") if p.is_symlink())
    assert files["on_disk"] == n_links and files["accounted"] is True
    assert files["unreadable"] == 0 and files["images"] + files["skipped_files"] == n_links
    exact = [sorted(m["id"] for m in g["members"]) for g in d["exact_duplicates"]]
    if all((real_data / r).exists() for r in PLANTED["exact"]):
        assert sorted(PLANTED["exact"]) in exact
    if all((real_data / r).exists() for r in PLANTED["conflict"]):
        assert sorted(PLANTED["conflict"]) in exact
        conflicts = [sorted(m["id"] for m in c["members"]) for c in d["label_conflicts"]]
        assert sorted(PLANTED["conflict"]) in conflicts
    if all((real_data / r).exists() for r in PLANTED["near"]):
        near = [sorted(m["id"] for m in g["members"]) for g in d["near_duplicates"]["groups"]]
        assert sorted(PLANTED["near"]) in near
    if (real_data / PLANTED["hidden"][0]).exists():
        assert any(s["item"] == PLANTED["hidden"][0] and "macOS Finder metadata" in s["message"] for s in d["skipped"])
    for name in d["plots"].values():
        assert (out / name).stat().st_size > 10_000
    assert "all accounted for" in proc.stdout and "Exact duplicates:" in proc.stdout


def test_split_and_cache_on_real_slice(real_slice, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    manifest = tmp_path / "split.csv"
    proc = _cli("split", str(real_slice), "-o", str(manifest), "--quiet", env_extra={"BLOODCELL_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    monkeypatch.setenv("BLOODCELL_CACHE", str(cache))
    from bloodcell.data import load_arrays

    cfg = PreprocessConfig(image_size=64, crop_fraction=0.9)
    test = load_arrays(manifest, cfg, split="test", progress=False)
    assert test.class_names == CLASSES and test.images.shape[1:] == (64, 64, 3)
    assert {CLASSES[i] for i in test.labels} == set(CLASSES)
    with open(manifest, newline="") as f:
        rows = {r["source_id"]: r for r in csv.DictReader(f)}
    for i in (0, len(test) // 2, len(test) - 1):
        path = (manifest.parent / rows[test.ids[i]]["path"])
        np.testing.assert_array_equal(test.images[i], load_prepared(path, cfg))


def test_full_real_split_keeps_every_duplicate_group_in_one_split(real_data, tmp_path):
    """The whole release: no group, and no two files with the same bytes, on two sides of the split."""
    manifest = tmp_path / "split.csv"
    proc = _cli("split", str(real_data), "-o", str(manifest), "--quiet",
                env_extra={"BLOODCELL_CACHE": str(REPO / ".cache" / "bloodcell")})
    assert proc.returncode == 0, proc.stderr
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    excluded_path = manifest.with_name("split.excluded.csv")
    excluded = list(csv.DictReader(open(excluded_path, newline=""))) if excluded_path.exists() else []
    images = [p for c in real_data.iterdir() if c.is_dir() for p in c.iterdir() if not p.name.startswith(".")]
    assert len(rows) + len(excluded) == len(images)

    by_group, by_bytes = defaultdict(set), defaultdict(set)
    for r in rows:
        by_group[r["group"]].add(r["split"])
        digest = hashlib.sha256((manifest.parent / r["path"]).read_bytes()).hexdigest()
        assert digest == r["sha256"]
        by_bytes[digest].add(r["split"])
    assert [g for g, s in by_group.items() if len(s) > 1] == []
    assert [h for h, s in by_bytes.items() if len(s) > 1] == []
    assert len(by_group) < len(rows)  # duplicate groups exist, so the check above is not vacuous

    for label in CLASSES:
        n = [sum(r["label"] == label and r["split"] == s for r in rows) for s in ("train", "val", "test")]
        total = sum(n)
        assert abs(n[0] / total - 0.7) < 0.01 and abs(n[1] / total - 0.1) < 0.01 and abs(n[2] / total - 0.2) < 0.01
    excluded_ids = {r["source_id"] for r in excluded}
    if all((real_data / r).exists() for r in PLANTED["conflict"]):
        assert set(PLANTED["conflict"]) <= excluded_ids
    ids = {r["source_id"]: r for r in rows}
    a, b = PLANTED["near"]
    if a in ids and b in ids:
        assert ids[a]["split"] == ids[b]["split"] and ids[a]["group"] == ids[b]["group"]
