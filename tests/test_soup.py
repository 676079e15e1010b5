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



@pytest.fixture(scope="module")
def bn_runs(tmp_path_factory):
    """Two tiny networks with batch norm, and an .npz of the cells they trained on."""
    root = tmp_path_factory.mktemp("soup_bn")
    data = tiny_data(size=32)
    for seed in (0, 1):
        fit(tiny_config(model="enhanced_cnn", image_size=32, epochs=1, seed=seed), data, root / f"s{seed}",
            progress=False)
    np.savez(root / "cells.npz", images=data.train_images, labels=data.train_labels)
    return [root / "s0", root / "s1"], root / "cells.npz"


def test_batch_norm_statistics_are_reestimated_on_the_datas_images_when_asked(bn_runs, tmp_path):
    from bloodcell.core.preprocess import PreprocessConfig
    from bloodcell.data.cache import load_arrays, sample_rows
    from bloodcell.networks.batch_norm import batch_norm_layers, reestimate_batch_norm
    from bloodcell.packaging.card import card

    runs, data = bn_runs
    plain = bloodcell.soup(runs, tmp_path / "plain")
    fresh = bloodcell.soup(runs, tmp_path / "fresh", batch_norm_data=data, batch_norm_images=6, seed=3)
    meta = read_meta(fresh)
    net = load_model(plain).module
    layers = len(batch_norm_layers(net))
    assert layers > 0 and meta["soup"]["batch_norm"] == {"reestimated_on_images": 6, "layers": layers}
    assert card(meta)["soup"]["batch_norm"]["reestimated_on_images"] == 6
    a, b = _state(plain), _state(fresh)
    means = [k for k in a if k.endswith("running_mean")]
    assert all(torch.equal(a[k], b[k]) for k in a if "running" not in k and "num_batches" not in k)
    assert not any(torch.allclose(a[k], b[k]) for k in means)
    # the statistics are those of the same six images: re-estimating the plain soup on them gives them
    pre = PreprocessConfig.from_dict(meta["preprocess"])
    assert reestimate_batch_norm(net, load_arrays(sample_rows(data, 6, 3), pre, require_labels=False).images, pre) == layers
    state = net.state_dict()
    assert all(torch.allclose(state[k].float(), b[k].float(), atol=1e-5) for k in means)


def test_the_cli_reestimates_batch_norm_and_refuses_an_image_count_without_data(bn_runs, tmp_path):
    runs, data = bn_runs
    out = tmp_path / "cli_bn"
    done = subprocess.run([sys.executable, "-m", "bloodcell", "soup", *map(str, runs), "-o", str(out),
                           "--batch-norm-data", str(data), "--batch-norm-images", "4"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"re-estimated on 4 images of {data}" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "bloodcell", "soup", *map(str, runs), "-o", str(tmp_path / "x"),
                          "--batch-norm-images", "4"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--batch-norm-images goes with --batch-norm-data" in bad.stderr
    assert "Traceback" not in bad.stderr
    zero = subprocess.run([sys.executable, "-m", "bloodcell", "soup", *map(str, runs), "-o", str(tmp_path / "z"),
                           "--batch-norm-data", str(data), "--batch-norm-images", "0"],
                          capture_output=True, text=True, timeout=120)
    assert zero.returncode != 0 and "must be at least 1, got 0" in zero.stderr and not (tmp_path / "z").exists()
