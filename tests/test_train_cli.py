"""``bloodcell train`` end to end on small generated datasets (and a slice of the real one)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from _train_helpers import TINY, _env  # noqa: F401  (_env: autouse fixture)
from bloodcell.cli.main import main
from bloodcell.core.classes import CLASSES
from bloodcell.networks import load_model


def test_train_on_a_folder_makes_a_seeded_split_and_a_model(make_folder_dataset, tmp_path, capsys):
    root = make_folder_dataset(per_class=8, classes=("basophil", "lymphocyte", "platelet"), size=24)
    shutil.copy(root / "basophil" / "basophil_000.png", root / "basophil" / "copy_of_000.png")
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "2", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "best epoch" in printed and str(out) in printed
    meta = json.loads((out / "model.json").read_text())
    assert meta["data"]["split"] == "stratified" and meta["data"]["exact_duplicates_dropped"] == 1
    rows = list(csv.DictReader((out / "split.csv").open()))
    assert {r["split"] for r in rows} == {"train", "val"} and len(rows) == 24
    assert {r["label"] for r in rows if r["split"] == "val"} == {"basophil", "lymphocyte", "platelet"}
    assert load_model(out).class_names == ("basophil", "lymphocyte", "platelet")
    # The same command with --resume and more epochs continues the run.
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "3", "--resume", *TINY]) == 0
    assert [h["epoch"] for h in json.loads((out / "model.json").read_text())["history"]] == [1, 2, 3]


def _manifest(root, path, drop_val_class=None):
    rows = []
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for k, f in enumerate(sorted(cls_dir.iterdir())):
            split = "val" if k % 4 == 0 else ("test" if k % 4 == 1 else "train")
            if split == "val" and cls_dir.name == drop_val_class:
                split = "train"
            rows.append({"path": str(f), "label": cls_dir.name, "split": split})
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_train_on_a_split_manifest_uses_its_rows_and_never_the_test_rows(make_folder_dataset, tmp_path):
    root = make_folder_dataset(per_class=8, classes=("eosinophil", "monocyte"), size=24)
    manifest = _manifest(root, tmp_path / "split.csv")
    out = tmp_path / "run"
    assert main(["train", "--data", str(manifest), "--out", str(out), "--epochs", "1", *TINY]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["data"]["split"] == "given" and meta["data"]["excluded_test_images"] == 4
    assert (meta["data"]["train_images"], meta["data"]["val_images"]) == (8, 4)
    assert meta["data_manifest_sha256"] and not (out / "split.csv").exists()


def test_cli_bad_input_is_one_clear_line(make_folder_dataset, tmp_path, capsys):
    root = make_folder_dataset(per_class=8, classes=("eosinophil", "monocyte"), size=24)
    manifest = _manifest(root, tmp_path / "split.csv", drop_val_class="monocyte")
    assert main(["train", "--data", str(manifest), "--out", str(tmp_path / "a"), "--epochs", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert "The validation split has no images of 'monocyte'" in err and "Traceback" not in err
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "b"), *TINY, "--model", "resnet5"]) == 2
    assert "Unknown model 'resnet5'. Did you mean 'resnet50'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "c"), *TINY]) == 2
    assert "No training data: pass --data PATH" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--data", str(root), *TINY, "--epochs", "1"]) == 0
    assert "no checkpoint yet, starting from the beginning" in capsys.readouterr().err


def test_init_from_a_trained_model_via_the_cli(make_folder_dataset, tmp_path):
    root = make_folder_dataset(per_class=8, classes=("basophil", "lymphocyte", "platelet"), size=24)
    parent = tmp_path / "parent"
    assert main(["train", "--data", str(root), "--out", str(parent), "--epochs", "1", *TINY]) == 0
    other = make_folder_dataset(per_class=8, classes=("basophil", "neutrophil", "platelet"), size=24, seed=1)
    child = tmp_path / "child"
    args = ["--threads", "1", "--no-progress", "--epochs", "1", "--batch-size", "8"]
    assert main(["train", "--data", str(other), "--out", str(child), "--init", str(parent), *args]) == 0
    meta = json.loads((child / "model.json").read_text())
    assert meta["architecture"] == "basic_cnn" and meta["preprocess"]["image_size"] == 16
    assert meta["init"]["new_classes"] == ["neutrophil"] and meta["init"]["dropped_classes"] == ["lymphocyte"]
    assert main(["train", "--data", str(other), "--out", str(tmp_path / "x"), "--init", str(parent), "--model",
                 "enhanced_cnn", *args]) == 2


def _real_slice(real_data, path, classes, per_class: int, val: int):
    """A split manifest of the first ``per_class`` real images of each class, the first ``val`` of them validation."""
    rows = []
    for name in classes:
        files = sorted((real_data / name).glob("*.jpg"))[:per_class]
        rows += [{"path": str(f), "label": name, "split": "val" if k < val else "train"} for k, f in enumerate(files)]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.mark.integration
def test_train_on_a_slice_of_the_real_dataset(real_data, tmp_path):
    manifest = _real_slice(real_data, tmp_path / "slice.csv", CLASSES, per_class=10, val=3)
    out = tmp_path / "run"
    assert main(["train", "--recipe", "cpu_fast_cnn", "--data", str(manifest), "--out", str(out), "--image-size", "32",
                 "--epochs", "1", "--threads", "1", "--no-progress"]) == 0
    loaded = load_model(out)
    assert loaded.class_names == CLASSES and loaded.meta["data"]["train_images"] == 56


def test_ensemble_recipe_trains_each_member_then_combines(make_folder_dataset, tmp_path, capsys):
    from bloodcell.training.config import load_config

    assert load_config(recipe="efficientnet_b3").pretrained is True  # the shipped recipe's members exist
    root = make_folder_dataset(per_class=8, classes=("basophil", "lymphocyte", "platelet"), size=24)
    recipe = tmp_path / "pair.yaml"
    recipe.write_text("members: [basic_cnn, basic_cnn_augmented]\nweights: [2, 1]\n")
    out = tmp_path / "ens"
    args = ["train", "--config", str(recipe), "--data", str(root), "--out", str(out), "--image-size", "16",
            "--epochs", "1", "--threads", "1", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "member basic_cnn_augmented" in printed and "ensemble:" in printed
    ens = load_model(out / "ensemble")
    assert ens.meta["ensemble"]["weights"] == pytest.approx([2 / 3, 1 / 3])
    assert json.loads((out / "basic_cnn_augmented" / "model.json").read_text())["config"]["augment"]["hflip"]
    # Resuming keeps finished members and rebuilds the ensemble.
    assert main(args + ["--resume"]) == 0
    assert "already trained (completed), kept" in capsys.readouterr().err
    recipe.write_text("members: [basic_cnn, nope_cnn]\n")
    assert main(args[:-1] + ["--out", str(tmp_path / "e2")]) == 2
    assert "Unknown recipe 'nope_cnn'" in capsys.readouterr().err


@pytest.mark.integration
def test_cell_framing_and_image_normalization_are_trained_and_stored(real_data, tmp_path):
    manifest = _real_slice(real_data, tmp_path / "slice.csv", ("lymphocyte", "neutrophil"), per_class=8, val=2)
    out = tmp_path / "run"
    assert main(["train", "--recipe", "cpu_fast_cnn", "--data", str(manifest), "--out", str(out), "--image-size", "32",
                 "--epochs", "1", "--threads", "1", "--no-progress", "--framing", "cell",
                 "--normalization", "image"]) == 0
    pre = load_model(out).preprocess
    assert (pre.framing, pre.normalization) == ("cell", "image")
    assert 0.15 < pre.cell_share < 0.6  # a PBC cell fills about a third of the field's side
    child = tmp_path / "child"
    assert main(["train", "--data", str(manifest), "--out", str(child), "--init", str(out), "--epochs", "1",
                 "--threads", "1", "--no-progress", "--framing", "centre"]) == 0
    assert (load_model(child).preprocess.framing, load_model(child).preprocess.normalization) == ("centre", "image")
