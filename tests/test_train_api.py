"""``bloodcell.train``: the Python verb runs what ``bloodcell train`` runs, resume included."""

from __future__ import annotations

import json

import pytest
import yaml

import bloodcell
from bloodcell import ConfigError
from bloodcell.training import EnsembleResult, FitResult, show_config

TINY = {"model": "basic_cnn", "image_size": 16, "batch_size": 8, "threads": 1, "precision": "fp32"}


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODCELL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BLOODCELL_WORKERS", "1")


def test_python_verb_trains_then_resumes_from_the_run_folder(make_folder_dataset, tmp_path):
    root = make_folder_dataset(per_class=8, classes=("basophil", "lymphocyte", "platelet"), size=24)
    out = tmp_path / "run"
    result = bloodcell.train(data=root, out=out, epochs=1, progress=False, overrides={"lr": 0.002}, **TINY)
    assert isinstance(result, FitResult) and result.run_dir == out and [h["epoch"] for h in result.history] == [1]
    meta = json.loads((out / "model.json").read_text())
    assert meta["config"]["lr"] == 0.002 and meta["config"]["batch_size"] == 8 and meta["data"]["source"] == str(root)
    assert (out / "split.csv").is_file()
    # Resuming names only the folder: the saved config.yaml supplies the data and settings, epochs is extended.
    resumed = bloodcell.train(resume=str(out), epochs=2, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == result.history[0]
    assert json.loads((out / "model.json").read_text())["config"]["lr"] == 0.002
    # Without --resume the folder is refused, as on the command line.
    with pytest.raises(ConfigError, match="already holds a training run"):
        bloodcell.train(data=root, out=out, epochs=1, progress=False, **TINY)


def test_show_config_is_the_config_train_would_run(tmp_path):
    text = show_config(recipe="cpu_fast_cnn", epochs=3, overrides={"augment.hflip": True})
    cfg = yaml.safe_load(text)
    assert cfg["epochs"] == 3 and cfg["augment"]["hflip"] is True
    recipe = tmp_path / "pair.yaml"
    recipe.write_text("members: [basic_cnn, basic_cnn_augmented]\n")
    assert show_config(config=recipe).count("# member ") == 2


def test_argument_conflicts_are_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        bloodcell.train(recipe="cpu_fast_cnn", config=tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="name different folders"):
        bloodcell.train(resume=str(tmp_path / "a"), out=tmp_path / "b")
    with pytest.raises(ConfigError, match="--resume needs the run folder"):
        bloodcell.train(resume=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_ensemble_recipe_returns_each_members_metrics(make_folder_dataset, tmp_path):
    root = make_folder_dataset(per_class=8, classes=("basophil", "lymphocyte", "platelet"), size=24)
    recipe = tmp_path / "pair.yaml"
    recipe.write_text("members: [basic_cnn, basic_cnn_augmented]\n")
    result = bloodcell.train(config=recipe, data=root, out=tmp_path / "ens", image_size=16, epochs=1, threads=1,
                             progress=False)
    assert isinstance(result, EnsembleResult) and result.run_dir == tmp_path / "ens" / "ensemble"
    assert set(result.members) == {"basic_cnn", "basic_cnn_augmented"}
    assert all("val_acc" in m for m in result.members.values())
