"""bloodcell adapt --unlabelled: one round of class-balanced pseudo-labels from a lab's unlabelled cells."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import numpy as np
import pytest

from _serve_helpers import cli, tiny_model
from bloodcell.adaptation import adapt
from bloodcell.adaptation.pseudo import open_unlabelled, pick, with_pseudo_labels
from bloodcell.core.errors import DataError
from bloodcell.core.model_folder import read_meta
from bloodcell.data import open_dataset
from bloodcell.data.readers.dataset import Dataset, Sample

LAB = ("basophil", "lymphocyte", "monocyte")


@pytest.fixture(autouse=True)
def _few_non_cells(monkeypatch):
    monkeypatch.setattr("bloodcell.adaptation.calibrate.NON_CELLS_PER_KIND", 4)
    monkeypatch.setattr("bloodcell.adaptation.imagenet.IMAGE_SIZE", 48)


@dataclass
class P:
    label: str
    probability: float
    not_a_blood_cell: bool = False


def test_pick_takes_the_most_probable_of_each_class_up_to_its_labelled_count():
    predictions = [P("lymphocyte", 0.6), P("lymphocyte", 0.9), None, P("monocyte", 0.99, True),
                   P("monocyte", 0.7), P("lymphocyte", 0.8), P("platelet", 0.99), P("monocyte", 0.5)]
    chosen = pick(predictions, {"lymphocyte": 2, "monocyte": 5, "basophil": 3})
    assert chosen == [(1, "lymphocyte"), (4, "monocyte"), (5, "lymphocyte"), (7, "monocyte")]
    assert pick(predictions, {"lymphocyte": 0}) == []


def test_pseudo_labelled_cells_join_the_fitting_cells(tmp_path):
    fit = Dataset(tmp_path, "folder", [Sample("a.png", "basophil", tmp_path / "a.png")])
    more = Dataset(tmp_path, "folder", [Sample(f"u{i}.png", None, tmp_path / f"u{i}.png") for i in range(3)])
    joined = with_pseudo_labels(fit, more, [(2, "monocyte")])
    assert [(s.source_id, s.label) for s in joined.samples] == [("a.png", "basophil"), ("u2.png", "monocyte")]
    rgb = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    fit = Dataset(tmp_path, "npz", [Sample("x:0", "basophil", None, row=0), Sample("x:1", "monocyte", None, row=1)],
                  arrays=rgb[:2])
    more = Dataset(tmp_path, "npz", [Sample(f"y:{i}", None, None, row=i) for i in range(3)], arrays=rgb[2:])
    joined = with_pseudo_labels(fit, more, [(1, "basophil")])
    assert joined.samples[-1].row == 3 and joined.samples[-1].label == "basophil"
    assert np.array_equal(joined.arrays[joined.samples[-1].row], rgb[3])
    other = Dataset(tmp_path, "npz", [Sample("z:0", None, None, row=0)], arrays=rgb[:1, :4, :4])
    with pytest.raises(DataError, match="unlabelled"):
        with_pseudo_labels(fit, other, [(0, "basophil")])


def test_the_labelled_cells_are_never_taken_as_unlabelled(make_folder_dataset, tmp_path):
    lab = make_folder_dataset(per_class=3, classes=LAB, size=40, seed=3)
    more = tmp_path / "more"  # a flat folder of a lab's images, as predict reads it
    more.mkdir()
    for i, f in enumerate(sorted(lab.rglob("*.png"))):
        shutil.copy(f, more / f"copy_{i}.png")  # the labelled cells' bytes under other names
    with pytest.raises(DataError, match="no image found to learn from without labels"):
        open_unlabelled(more, open_dataset(lab))
    with pytest.raises(DataError, match="nowhere"):
        open_unlabelled(tmp_path / "nowhere", open_dataset(lab))
    extra = make_folder_dataset(per_class=2, classes=LAB, size=40, seed=4)
    for f in sorted(extra.rglob("*.png")):
        shutil.copy(f, more / f.name)
    found = open_unlabelled(more, open_dataset(lab))
    assert len(found) == 6 and all(s.label is None and s.path.name.startswith(LAB) for s in found.samples)


def test_adapt_learns_from_unlabelled_cells_and_says_so(make_folder_dataset, tmp_path):
    lab = make_folder_dataset(per_class=6, classes=LAB, size=40, seed=3)
    more = make_folder_dataset(per_class=5, classes=LAB, size=40, seed=5)
    result = adapt(lab, tmp_path / "out", model=tiny_model(), epochs=2, unlabelled=more, export=False, progress=False)
    meta = read_meta(result.out)
    record = meta["adaptation"]
    assert record["held_out_cells"] == {c: 2 for c in LAB}  # calibration stays on labelled cells only
    taken = record["unlabelled"]["pseudo_labelled"]
    assert record["unlabelled"]["cells"] == 15 and record["unlabelled"]["read"] == 15
    assert 0 < sum(taken.values()) and all(c in LAB and n <= 6 for c, n in taken.items())
    assert "15 unlabelled cells" in meta["model_card"]["data"]
    run = cli("adapt", str(lab), "--out", str(tmp_path / "cli"), "--model", str(tiny_model()), "--unlabelled",
              str(more), "--method", "linear", "--no-imagenet-member", "--no-export", "--quiet")
    assert run.returncode == 0, run.stderr
    assert "unlabelled cells: 15; joined the fitting cells with the class the model gave them: " in run.stdout
    bad = cli("adapt", str(lab), "--out", str(tmp_path / "bad"), "--model", str(tiny_model()), "--unlabelled",
              str(tmp_path / "nowhere"), "--quiet")
    assert bad.returncode != 0 and "nowhere" in bad.stderr and "Traceback" not in bad.stderr
