"""Soft-voting ensembles: probabilities, mixed input sizes, refusals, moving, ONNX, the CLI."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bloodcell import ConfigError, ModelError, PreprocessConfig
from bloodcell.core.model_folder import META, WEIGHTS, read_meta, write_meta
from bloodcell.core.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize
from bloodcell.networks import create_model, load_model, make_ensemble, save_model

SRC = Path(__file__).resolve().parents[1] / "src"
CLASSES4 = ("basophil", "eosinophil", "lymphocyte", "neutrophil")
HALF = (0.5, 0.5, 0.5)


def tiny_model(folder, arch="basic_cnn", size=32, classes=CLASSES4, mean=HALF, std=HALF, crop=1.0, seed=0, temperature=None,
               framing="centre", cell_share=None, normalization="dataset"):
    """Save an untrained (seeded) model folder and return it."""
    torch.manual_seed(seed)
    module = create_model(arch, num_classes=len(classes))
    with torch.no_grad():  # spread the logits so members disagree and temperatures matter
        for p in module.parameters():
            p.mul_(1.5)
    pre = PreprocessConfig(image_size=size, crop_fraction=crop, mean=mean, std=std, class_names=classes,
                           framing=framing, cell_share=cell_share, normalization=normalization)
    meta = {"architecture": arch, "model_kwargs": {}, "preprocess": pre.to_dict(), "data_manifest_sha256": "abc"}
    if temperature is not None:
        meta["calibration"] = {"temperature": temperature, "abstain_threshold": None}
    return save_model(folder, module.eval(), meta)


def member_proba(folder, x_uint8):
    """Probabilities of a member model on a uint8 NHWC batch already at its input size."""
    loaded = load_model(folder)
    with torch.no_grad():
        logits = loaded.module(normalize(x_uint8, loaded.preprocess))
    return torch.softmax(logits / loaded.temperature, dim=1)


def ensemble_proba(loaded, x_uint8):
    with torch.no_grad():
        return torch.softmax(loaded.module(normalize(x_uint8, loaded.preprocess)), dim=1)


def images(n, size, seed=1):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_probabilities_are_weighted_mean_of_members(tmp_path):
    a = tiny_model(tmp_path / "a", "basic_cnn", seed=0)
    b = tiny_model(tmp_path / "b", "enhanced_cnn", seed=1, temperature=2.5)
    c = tiny_model(tmp_path / "c", "basic_cnn", seed=2, temperature=0.7)
    out = make_ensemble([a, b, c], tmp_path / "ens", weights=[1, 1, 2])
    loaded = load_model(out)
    meta = read_meta(out)
    assert meta["architecture"] == "ensemble"
    assert meta["ensemble"] == {"members": ["member_0", "member_1", "member_2"], "weights": [0.25, 0.25, 0.5]}
    assert meta["data_manifest_sha256"] == "abc"
    assert sorted(p.name for p in (out / "member_1").iterdir()) == [META, WEIGHTS]
    assert loaded.class_names == CLASSES4 and loaded.preprocess.image_size == 32 and loaded.temperature == 1.0
    assert not loaded.module.training and not any(m.training for m in loaded.module.modules())

    x = images(5, 32)
    expected = 0.25 * member_proba(a, x) + 0.25 * member_proba(b, x) + 0.5 * member_proba(c, x)
    got = ensemble_proba(loaded, x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # The weighting matters: equal weights give another answer.
    equal = load_model(make_ensemble([a, b, c], tmp_path / "eq"))
    assert not torch.allclose(ensemble_proba(equal, x), got, atol=1e-4)


def test_members_of_different_sizes_normalization_and_class_order(tmp_path):
    big = tiny_model(tmp_path / "big", "basic_cnn", size=48, mean=HALF, std=HALF, seed=3)
    small = tiny_model(
        tmp_path / "small", "enhanced_cnn", size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        classes=tuple(reversed(CLASSES4)), seed=4,
    )
    loaded = load_model(make_ensemble([small, big], tmp_path / "ens", weights=[3, 1]))
    pre = loaded.preprocess
    # Largest size; mean/std of the largest member; class order of the first member.
    assert (pre.image_size, pre.mean, pre.class_names) == (48, HALF, tuple(reversed(CLASSES4)))

    x = images(4, 48, seed=5)
    # The small member sees the 48 px input resized with antialiasing and normalized its own way.
    x_small = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(32, 32), mode="bilinear", antialias=True)
    small_loaded = load_model(small)
    with torch.no_grad():
        small_in = (x_small / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        p_small = torch.softmax(small_loaded.module(small_in), 1)
    p_big = member_proba(big, x)[:, [3, 2, 1, 0]]  # big lists classes in the other order
    torch.testing.assert_close(ensemble_proba(loaded, x), 0.75 * p_small + 0.25 * p_big, atol=1e-5, rtol=1e-4)


def test_mismatched_class_sets_refused(tmp_path):
    a = tiny_model(tmp_path / "a")
    b = tiny_model(tmp_path / "b", classes=("basophil", "eosinophil", "lymphocyte", "platelet"))
    with pytest.raises(ModelError, match=r"member 1 \(.*b\) predicts classes .* lacks \['neutrophil'\] and adds \['platelet'\]"):
        make_ensemble([a, b], tmp_path / "ens")
    c = tiny_model(tmp_path / "c", classes=CLASSES4[:3])
    with pytest.raises(ModelError, match=r"lacks \['neutrophil'\]"):
        make_ensemble([a, c], tmp_path / "ens")
    assert not (tmp_path / "ens").exists()


def test_mismatched_crop_refused(tmp_path):
    a = tiny_model(tmp_path / "a", crop=1.0)
    b = tiny_model(tmp_path / "b", crop=0.8)
    with pytest.raises(ModelError, match=r"member 1 .* crops 0.8 of the shorter side, but member 0 .* crops 1"):
        make_ensemble([a, b], tmp_path / "ens")


def test_mismatched_framing_refused_and_shared_framing_kept(tmp_path):
    a = tiny_model(tmp_path / "a")
    b = tiny_model(tmp_path / "b", framing="cell", cell_share=0.4)
    with pytest.raises(ModelError, match=r"member 1 .* frames images by 'cell' .* member 0 .* by 'centre'"):
        make_ensemble([a, b], tmp_path / "ens")
    c = tiny_model(tmp_path / "c", framing="cell", cell_share=0.4, seed=1)
    ens = make_ensemble([b, c], tmp_path / "ens2")
    pre = PreprocessConfig.from_dict(read_meta(ens)["preprocess"])
    assert (pre.framing, pre.cell_share) == ("cell", 0.4)


def test_missing_member_refused_with_clear_message(tmp_path):
    a, b = tiny_model(tmp_path / "a"), tiny_model(tmp_path / "b", seed=1)
    with pytest.raises(ModelError, match=r"no model here"):
        make_ensemble([a, tmp_path / "nope"], tmp_path / "ens")
    out = make_ensemble([a, b], tmp_path / "ens")
    shutil.rmtree(out / "member_1")
    with pytest.raises(ModelError, match=r"ensemble member 'member_1' is missing \(expected the model folder .*member_1"):
        load_model(out)


def test_member_names_cannot_escape_the_folder(tmp_path):
    out = make_ensemble([tiny_model(tmp_path / "a"), tiny_model(tmp_path / "b", seed=1)], tmp_path / "ens")
    meta = read_meta(out)
    meta["ensemble"]["members"][1] = "../b"
    write_meta(out, meta)
    with pytest.raises(ModelError, match=r"ensemble member '\.\./b' is not a sub-folder name"):
        load_model(out)


def test_ensemble_folder_is_movable(tmp_path):
    a, b = tiny_model(tmp_path / "m" / "a"), tiny_model(tmp_path / "m" / "b", "enhanced_cnn", size=32, seed=1)
    out = make_ensemble([a, b], tmp_path / "here" / "ens")
    x = images(3, 32)
    before = ensemble_proba(load_model(out), x)
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    shutil.rmtree(tmp_path / "m")
    shutil.rmtree(tmp_path / "here")
    after = ensemble_proba(load_model(moved / META), x)
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize(
    "weights, match",
    [
        ([1], r"expected 2 \(one per member\), got 1"),
        ([1, -1], r"positive finite numbers; got \[1.0, -1.0\] \(bad: \[-1.0\]\)"),
        ([0, 1], r"bad: \[0.0\]"),
        ([1, math.nan], r"bad: \[nan\]"),
        (["x", 1], r"must be numbers"),
    ],
)
def test_bad_weights_refused(tmp_path, weights, match):
    a, b = tiny_model(tmp_path / "a"), tiny_model(tmp_path / "b", seed=1)
    with pytest.raises(ConfigError, match=match + r".*Fix: pass 2 positive numbers"):
        make_ensemble([a, b], tmp_path / "ens", weights=weights)


def test_output_checks(tmp_path):
    a, b = tiny_model(tmp_path / "a"), tiny_model(tmp_path / "b", seed=1)
    with pytest.raises(ConfigError, match="at least two member models, got 1"):
        make_ensemble([a], tmp_path / "ens")
    with pytest.raises(ConfigError, match="overlaps member folder"):
        make_ensemble([a, b], a / "ens")
    out = make_ensemble([a, b], tmp_path / "ens")
    with pytest.raises(ConfigError, match="already exists; .* pass --force"):
        make_ensemble([b, a], out)
    make_ensemble([b, a], out, weights=[1, 4], overwrite=True)
    assert read_meta(out)["ensemble"]["weights"] == [0.2, 0.8]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_nested_ensemble(tmp_path):
    a, b, c = (tiny_model(tmp_path / n, seed=i) for i, n in enumerate("abc"))
    inner = make_ensemble([a, b], tmp_path / "inner")
    outer = load_model(make_ensemble([inner, c], tmp_path / "outer", weights=[2, 1]))
    x = images(2, 32)
    expected = (2 / 3) * (0.5 * member_proba(a, x) + 0.5 * member_proba(b, x)) + (1 / 3) * member_proba(c, x)
    torch.testing.assert_close(ensemble_proba(outer, x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    a = tiny_model(tmp_path / "a", "enhanced_cnn", size=128, seed=0, temperature=1.7)
    b = tiny_model(tmp_path / "b", "basic_cnn", size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   classes=tuple(reversed(CLASSES4)), seed=1)
    loaded = load_model(make_ensemble([a, b], tmp_path / "ens", weights=[1, 2]))
    path = tmp_path / "ens.onnx"
    torch.onnx.export(
        loaded.module, (torch.zeros(1, 3, 128, 128),), str(path), opset_version=17, dynamo=False,
        input_names=["image"], output_names=["log_proba"], dynamic_axes={"image": {0: "n"}, "log_proba": {0: "n"}},
    )
    x = normalize(images(3, 128, seed=7), loaded.preprocess)
    with torch.no_grad():
        expected = loaded.module(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.exp(got).sum(1), 1.0, atol=1e-5)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "bloodcell", "ensemble", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli(tmp_path):
    a, b = tiny_model(tmp_path / "a", size=24), tiny_model(tmp_path / "b", "enhanced_cnn", size=32, seed=1)
    done = _cli(a, b, "-o", tmp_path / "ens", "--weights", "1", "3")
    assert done.returncode == 0, done.stderr
    assert "Wrote ensemble" in done.stdout and "member_1   0.750    32" in done.stdout
    assert read_meta(tmp_path / "ens")["ensemble"]["weights"] == [0.25, 0.75]
    bad = _cli(a, b, "-o", tmp_path / "ens2", "--weights", "1", "0")
    assert bad.returncode == 2
    assert bad.stderr.startswith("bloodcell ensemble: error: Ensemble weights must be positive")
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ens2").exists()


def test_training_cost_sums_an_ensembles_members(tmp_path):
    from bloodcell.evaluation.comparison import training_cost

    a, b = tiny_model(tmp_path / "a"), tiny_model(tmp_path / "b", seed=1)
    for folder, seconds in ((a, [30.5, 29.5]), (b, [100.0])):
        meta = read_meta(folder)
        meta["history"] = [{"epoch": i + 1, "seconds": s} for i, s in enumerate(seconds)]
        meta["training"] = {"threads": 1}
        write_meta(folder, meta)
    assert training_cost(a) == {"seconds": 60.0, "epochs": "2", "threads": 1}
    assert training_cost(make_ensemble([a, b], tmp_path / "ens")) == {"seconds": 160.0, "epochs": "2+1", "threads": 1}
    meta = read_meta(b)
    meta["history"] = []
    write_meta(b, meta)
    assert training_cost(b) is None
    assert training_cost(make_ensemble([a, b], tmp_path / "ens2")) is None
    assert training_cost(tmp_path / "not_a_model") is None


def test_ensemble_verb_and_a_failed_member_leaves_the_old_folder(tmp_path):
    import bloodcell

    a, b = tiny_model(tmp_path / "a"), tiny_model(tmp_path / "b", seed=1)
    out = bloodcell.ensemble([a, b], tmp_path / "ens", weights=[1, 3])
    assert read_meta(out)["ensemble"]["weights"] == [0.25, 0.75]
    (b / WEIGHTS).unlink()
    with pytest.raises(ModelError, match="weight file missing"):
        bloodcell.ensemble([a, b], out, force=True)
    assert read_meta(out)["ensemble"]["weights"] == [0.25, 0.75] and (out / "member_1" / WEIGHTS).is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_mismatched_normalization_refused(tmp_path):
    a = tiny_model(tmp_path / "a")
    b = tiny_model(tmp_path / "b", normalization="image", seed=1)
    with pytest.raises(ModelError, match=r"member 1 .* normalizes pixels by 'image', but member 0 .* by 'dataset'"):
        make_ensemble([a, b], tmp_path / "ens")
    c = tiny_model(tmp_path / "c", normalization="image", seed=2)
    pre = PreprocessConfig.from_dict(read_meta(make_ensemble([b, c], tmp_path / "ens2"))["preprocess"])
    assert pre.normalization == "image"


def test_ensembles_and_soups_keep_the_cell_share_their_members_agree_on():
    from bloodcell.networks.ensemble import shared_cell_share

    assert shared_cell_share([{"training_cell_share": 0.43}, {"training_cell_share": 0.44}]) == {
        "training_cell_share": 0.435}
    assert shared_cell_share([{"training_cell_share": 0.43}, {"training_cell_share": 0.6}]) == {}  # other crops
    assert shared_cell_share([{"training_cell_share": 0.43}, {}]) == {}  # one never measured
    assert shared_cell_share([{"training_cell_share": None}, {"training_cell_share": None}]) == {}
