"""The validation split training draws itself (data without a val split): exact copies once, near-duplicates together."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from _train_helpers import TINY, _env  # noqa: F401  (_env: autouse fixture)
from bloodcell.cli.main import main
from bloodcell.training.data import grouped_stratified_split, stratified_split


def _near_copies(path, n: int) -> list[str]:
    """``n`` files differing from ``path`` in one pixel each: other bytes, the same picture to the eye."""
    pixels = np.array(Image.open(path))
    names = []
    for k in range(n):
        copy = pixels.copy()
        copy[k, k] = (copy[k, k].astype(int) + 9) % 256
        target = path.with_name(f"near_{k}_{path.name}")
        Image.fromarray(copy).save(target)
        names.append(target.name)
    return names


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_duplicate_groups_stay_on_one_side_of_the_drawn_split(make_folder_dataset, tmp_path, seed):
    root = make_folder_dataset(per_class=8, classes=("basophil", "lymphocyte", "platelet"), size=24)
    group = {"basophil_003.png", *_near_copies(root / "basophil" / "basophil_003.png", 5)}
    out = tmp_path / f"run{seed}"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1", "--val-fraction", "0.4",
                 "--seed", str(seed), *TINY]) == 0
    rows = list(csv.DictReader((out / "split.csv").open()))
    sides = {r["split"] for r in rows if r["source_id"].rsplit("/", 1)[-1] in group}
    assert len(rows) == 29 and len(sides) == 1, sides
    assert {r["label"] for r in rows if r["split"] == "val"} == {"basophil", "lymphocyte", "platelet"}


def test_without_groups_the_split_is_the_plain_stratified_one():
    labels = np.repeat([0, 1, 2], 10)
    groups = [f"g{i}" for i in range(30)][::-1]  # names in any order: groups follow their first member
    plain = stratified_split(labels, 0.2, 3, ("a", "b", "c"))
    grouped = grouped_stratified_split(labels, groups, 0.2, 3, ("a", "b", "c"))
    assert all(np.array_equal(p, g) for p, g in zip(plain, grouped))
