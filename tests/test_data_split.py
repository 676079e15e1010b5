"""bloodcell split: stratified, reproducible, duplicate groups kept together, flagged images left out."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from _data_helpers import flawed_dataset, jpeg_bytes, smear
from bloodcell import ConfigError, DataError, PreprocessConfig
from bloodcell.data import load_arrays, open_dataset
from bloodcell.data.split import assign_groups, split_dataset, write_split

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODCELL_CACHE", str(tmp_path / "cache"))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_split_keeps_groups_together_and_leaves_flagged_out(tmp_path):
    root = flawed_dataset(tmp_path / "flawed")
    ds = open_dataset(root)
    res = split_dataset(ds, seed=3, workers=1, progress=False)
    by_id = {s.source_id: sp for s, sp in zip(ds.samples, res.splits)}
    assert by_id["basophil/basophil_000.jpg"] == by_id["basophil/copy_of_000.jpg"] is not None
    assert by_id["platelet/platelet_005.jpg"] == by_id["platelet/platelet_005_reencoded.jpg"] is not None
    left_out = {k for k, v in by_id.items() if v is None}
    assert left_out == {"lymphocyte/broken.jpg", "eosinophil/truncated.jpg", "eosinophil/eosinophil_003.jpg",
                        "lymphocyte/eo_003_again.jpg", "basophil/odd.png"}
    assert res.straddling_groups() == []
    kept = split_dataset(ds, seed=3, keep_flagged=True, workers=1, progress=False)
    kept_ids = {s.source_id: sp for s, sp in zip(ds.samples, kept.splits)}
    assert {k for k, v in kept_ids.items() if v is None} == {"lymphocyte/broken.jpg", "eosinophil/truncated.jpg"}
    assert kept_ids["eosinophil/eosinophil_003.jpg"] == kept_ids["lymphocyte/eo_003_again.jpg"]


def test_split_is_stratified_and_reproducible(make_folder_dataset, tmp_path):
    root = tmp_path / "d"
    for c, label in (("ig", 3), ("neutrophil", 6)):
        (root / c).mkdir(parents=True)
        for i in range(50 if c == "ig" else 30):
            (root / c / f"{i}.jpg").write_bytes(jpeg_bytes(smear(1000 * label + i, label), 95))
    ds = open_dataset(root)
    a = split_dataset(ds, seed=0, workers=1, progress=False)
    assert a.counts() == {"ig": {"train": 35, "val": 5, "test": 10, "excluded": 0},
                          "neutrophil": {"train": 21, "val": 3, "test": 6, "excluded": 0}}
    b = split_dataset(ds, seed=0, workers=1, progress=False)
    c = split_dataset(ds, seed=1, workers=1, progress=False)
    assert a.splits == b.splits and a.splits != c.splits
    write_split(a, tmp_path / "one.csv")
    write_split(b, tmp_path / "two.csv")
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()
    other = split_dataset(ds, val=0.0, test=0.5, workers=1, progress=False).counts()
    assert other["ig"] == {"train": 25, "val": 0, "test": 25, "excluded": 0}


def test_assign_groups_never_splits_a_group_and_balances_sizes():
    labels = {f"g{i}": "ig" for i in range(40)}
    sizes = {f"g{i}": (3 if i < 5 else 1) for i in range(40)}
    where = assign_groups(labels, sizes, (0.7, 0.1, 0.2), seed=0)
    per = Counter()
    for g, s in where.items():
        per[s] += sizes[g]
    assert sum(per.values()) == 50 and per == {"train": 35, "val": 5, "test": 10}


def test_manifest_loads_back_with_relative_paths(tmp_path):
    root = flawed_dataset(tmp_path / "data" / "flawed")
    res = split_dataset(open_dataset(root), workers=1, progress=False)
    out = tmp_path / "data" / "splits" / "split.csv"
    written = write_split(res, out)
    rows = _rows(out)
    assert rows[0]["path"].startswith("../flawed/") and set(rows[0]) == {
        "path", "label", "split", "source_id", "sha256", "group", "flags"}
    assert len(rows) == 41 and len(_rows(written["excluded"])) == 5
    assert {r["reason"] for r in _rows(written["excluded"])} == {"unreadable", "label-conflict", "outlier"}
    train = load_arrays(out, PreprocessConfig(image_size=16), split="train", workers=1, progress=False)
    assert len(train) == sum(r["split"] == "train" for r in rows)
    assert train.class_names == ("basophil", "eosinophil", "lymphocyte", "platelet")
    assert set(train.ids) == {r["source_id"] for r in rows if r["split"] == "train"}


def test_split_bad_input(tmp_path):
    with pytest.raises(ConfigError, match=r"val and test fractions must each be in \[0, 1\) and leave room"):
        split_dataset(None, val=0.5, test=0.5)
    np.savez(tmp_path / "a.npz", images=np.zeros((3, 8, 8, 3), np.uint8), labels=[0, 1, 2])
    with pytest.raises(DataError, match=r"a\.npz: bloodcell split writes a manifest of image files"):
        split_dataset(open_dataset(tmp_path / "a.npz"), progress=False)
    (tmp_path / "x.png").write_bytes(jpeg_bytes(smear(1)))
    (tmp_path / "m.csv").write_text("path,label\nx.png,\n")
    with pytest.raises(DataError, match=r"1 image\(s\) have no label \(e\.g\. x\.png\)"):
        split_dataset(open_dataset(tmp_path / "m.csv"), progress=False)


def test_split_cli_prints_counts_and_writes_manifest(tmp_path):
    root = flawed_dataset(tmp_path / "flawed")
    env = {**os.environ, "PYTHONPATH": SRC, "BLOODCELL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "bloodcell", "split", str(root), "-o", str(tmp_path / "s.csv"),
                           "--quiet", "--workers", "1"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "basophil" in proc.stdout and "excluded" in proc.stdout
    assert "Excluded: 2 unreadable, 2 label-conflict, 1 outlier" in proc.stdout
    assert len(_rows(tmp_path / "s.csv")) == 41
    bad = subprocess.run([sys.executable, "-m", "bloodcell", "split", str(root), "--test", "0.95"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "val and test fractions must each be in [0, 1)" in bad.stderr
