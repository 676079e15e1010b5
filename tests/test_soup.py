"""Model soups: the weighted mean of networks' weights as one model folder (``bloodcell soup``)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import bloodcell
from _train_helpers import tiny_config, tiny_data
from bloodcell import ConfigError, ModelError
from bloodcell.core.model_folder import WEIGHTS, read_meta, write_meta
from bloodcell.networks import load_model, make_ensemble
from bloodcell.prediction.torch_backend import predict_proba
from bloodcell.training import fit


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    out = []
    for seed in (0, 1, 2):
        fit(tiny_config(epochs=1, seed=seed), tiny_data(), root / f"seed{seed}", progress=False)
        out.append(root / f"seed{seed}")
    return out


def _state(folder):
    return load_file(str(folder / WEIGHTS))


def test_the_soup_is_the_weighted_mean_of_the_weights(runs, tmp_path):
    out = bloodcell.soup(runs[:2], tmp_path / "even")
    a, b, s = _state(runs[0]), _state(runs[1]), _state(out)
    floats = [k for k in s if s[k].is_floating_point()]
    assert floats and all(torch.allclose(s[k], (a[k] + b[k]) / 2, atol=1e-6) for k in floats)
    assert not torch.equal(a[floats[0]], b[floats[0]])  # the two networks do differ
    meta = read_meta(out)
    assert meta["soup"]["weights"] == [0.5, 0.5] and "calibration" not in meta
    assert meta["architecture"] == read_meta(runs[0])["architecture"]
    from bloodcell.packaging.card import card

    assert card(meta)["soup"] == {"members": [str(r.resolve()) for r in runs[:2]], "weights": [0.5, 0.5]}
    images = tiny_data(seed=7).val_images
    probs = predict_proba(load_model(out), images)
    assert probs.shape == (len(images), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)

    weighted = bloodcell.soup(runs, tmp_path / "weighted", weights=[2, 1, 1])
    c, s = _state(runs[2]), _state(weighted)
    assert all(torch.allclose(s[k], 0.5 * a[k] + 0.25 * b[k] + 0.25 * c[k], atol=1e-6) for k in floats)


def test_an_ensemble_folder_stands_for_its_members(runs, tmp_path):
    ens = make_ensemble(runs[:2], tmp_path / "ens", weights=[3, 1])
    out = bloodcell.soup([ens], tmp_path / "from_ensemble")
    a, b, s = _state(runs[0]), _state(runs[1]), _state(out)
    key = next(k for k in s if s[k].is_floating_point())
    assert torch.allclose(s[key], 0.75 * a[key] + 0.25 * b[key], atol=1e-6)
    assert read_meta(out)["soup"]["weights"] == [0.75, 0.25]


def test_networks_that_cannot_be_averaged_are_refused(runs, tmp_path):
    with pytest.raises(ConfigError, match="at least two networks"):
        bloodcell.soup(runs[:1], tmp_path / "one")
    with pytest.raises(ConfigError, match="one per model"):
        bloodcell.soup(runs[:2], tmp_path / "w", weights=[1.0])
    with pytest.raises(ConfigError, match=r"Soup weights must be positive finite numbers; got \[1.0, -1.0\]"):
        bloodcell.soup(runs[:2], tmp_path / "w", weights=[1.0, -1.0])
    with pytest.raises(ConfigError, match="is one of the given models"):
        bloodcell.soup(runs[:2], runs[0])
    other = tmp_path / "other_classes"
    fit(dataclasses.replace(tiny_config(epochs=1)), tiny_data(classes=("basophil", "eosinophil", "platelet")),
        other, progress=False)
    with pytest.raises(ModelError, match="class_names .* differs"):
        bloodcell.soup([runs[0], other], tmp_path / "classes")
    wider = tmp_path / "wider"
    fit(tiny_config(epochs=1, image_size=20), tiny_data(size=20), wider, progress=False)
    with pytest.raises(ModelError, match="image_size 20 differs"):
        bloodcell.soup([runs[0], wider], tmp_path / "size")
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    meta = read_meta(runs[1])
    write_meta(renamed, {**meta, "architecture": "enhanced_cnn"})
    (renamed / WEIGHTS).write_bytes((runs[1] / WEIGHTS).read_bytes())
    with pytest.raises(ModelError, match="architecture 'enhanced_cnn' differs"):
        bloodcell.soup([runs[0], renamed], tmp_path / "arch")
    done = bloodcell.soup(runs[:2], tmp_path / "exists")
    with pytest.raises(ConfigError, match="already exists"):
        bloodcell.soup(runs[:2], done)
    assert bloodcell.soup(runs[:2], done, force=True) == done


def test_the_cli_writes_the_soup_and_says_what_to_do_next(runs, tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "bloodcell", "soup", *map(str, runs[:2]), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "0.500" in done.stdout and f"bloodcell calibrate {out}" in done.stdout
    assert json.loads((out / "model.json").read_text())["soup"]["members"] == [str(r.resolve()) for r in runs[:2]]
    bad = subprocess.run([sys.executable, "-m", "bloodcell", "soup", str(runs[0]), "-o", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "at least two networks" in bad.stderr and "Traceback" not in bad.stderr
