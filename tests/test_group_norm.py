"""The group-norm EfficientNet-Lite0: ImageNet weights without batch-norm statistics, and a start from a
trained batch-norm model that keeps what it knew (norm layers matched to its outputs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from _train_helpers import blobs, tiny_config
from bloodcell import ConfigError
from bloodcell.networks import create_model
from bloodcell.training import TrainData, fit, make_preprocess
from bloodcell.training.norm_transfer import match_norm_statistics
from bloodcell.training.warmstart import InitSource, apply_init, open_init

CLASSES = ("basophil", "lymphocyte", "platelet")


def test_group_norm_lite0_takes_imagenet_weights_without_batch_norm_statistics():
    gn = create_model("efficientnet_lite0_gn", num_classes=3, pretrained=True)
    bn = create_model("efficientnet_lite0", num_classes=3, pretrained=True)
    assert sum(isinstance(m, nn.GroupNorm) for m in gn.modules()) == 49
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    bn_state = bn.state_dict()
    for key, value in gn.state_dict().items():
        assert torch.equal(value, bn_state[key]), key  # every tensor taken, none left at its fresh value
    assert set(bn_state) - set(gn.state_dict()) == {k for k in bn_state if k.rsplit(".", 1)[-1] in
                                                    ("running_mean", "running_var", "num_batches_tracked")}


def _lab_images(n: int = 48, size: int = 32) -> np.ndarray:
    return blobs(n // len(CLASSES), CLASSES, size=size, seed=5)[0]


@pytest.fixture(scope="module")
def lite0_parent(tmp_path_factory):
    """A Lite0 (batch norm) trained briefly on blobs at 32 px, as ``bloodcell train`` writes it."""
    run = tmp_path_factory.mktemp("lite0") / "model"
    x, y = blobs(8, CLASSES, size=32, seed=1)
    vx, vy = blobs(4, CLASSES, size=32, seed=2)
    data = TrainData(x, y, vx, vy, CLASSES, {"source": "synthetic"}, "lite0-parent")
    fit(tiny_config(model="efficientnet_lite0", image_size=32, epochs=1), data, run, progress=False)
    return run


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def test_a_group_norm_start_reproduces_the_batch_norm_model(lite0_parent):
    from bloodcell.core.preprocess import normalize
    from bloodcell.networks import load_model

    source = open_init(str(lite0_parent))
    assert source.fits("efficientnet_lite0_gn") and source.fits("efficientnet_lite0") and not source.fits("resnet50")
    reference = load_model(lite0_parent)
    images = _lab_images()
    pre = reference.preprocess
    x = torch.from_numpy(normalize(images, pre))
    want = _features(reference.module.float(), x)

    copied = create_model("efficientnet_lite0_gn", num_classes=3)
    assert apply_init(copied, source, CLASSES)["matched_norm_layers"] == 0  # weights only, nothing to match with
    matched = create_model("efficientnet_lite0_gn", num_classes=3)
    summary = apply_init(matched, source, CLASSES, pre, images)
    assert summary["matched_norm_layers"] == 49

    def error(model):
        return float((_features(model.eval(), x) - want).norm() / want.norm())

    assert error(matched) < 0.5 * error(copied)
    assert error(matched) < 0.1


def test_matched_layers_have_the_reference_moments_on_the_sample():
    torch.manual_seed(0)
    reference = create_model("efficientnet_lite0", num_classes=3, pretrained=True)
    images = _lab_images(24)
    from bloodcell.core.preprocess import PreprocessConfig, normalize

    pre = PreprocessConfig(image_size=32, class_names=CLASSES)
    reference.train()
    with torch.no_grad():  # batch-norm statistics of these images, so the reference's layers are not degenerate
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        reference(torch.from_numpy(normalize(images, pre)))
    model = create_model("efficientnet_lite0_gn", num_classes=3, pretrained=True)
    assert match_norm_statistics(model, pre, reference, pre, images) == 49
    seen = {}
    last = [n for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)][-1]
    for net, key in ((model, "gn"), (reference, "bn")):
        layer = dict(net.named_modules())[last].drop
        hook = layer.register_forward_hook(lambda _m, a, _o, key=key: seen.__setitem__(key, a[0].mean(dim=(0, 2, 3))))
        with torch.no_grad():
            net.eval()(torch.from_numpy(normalize(images, pre)))
        hook.remove()
    assert torch.allclose(seen["gn"], seen["bn"], atol=1e-3, rtol=1e-3)
    assert match_norm_statistics(create_model("basic_cnn", num_classes=3), pre, reference, pre, images) == 0
    assert match_norm_statistics(create_model("efficientnet_lite0_gn", num_classes=3), pre, model, pre, images) == 0


def test_training_a_group_norm_variant_from_a_batch_norm_model(lite0_parent, tmp_path):
    source = open_init(str(lite0_parent))
    x, y = blobs(8, CLASSES, size=32, seed=3)
    vx, vy = blobs(4, CLASSES, size=32, seed=4)
    data = TrainData(x, y, vx, vy, CLASSES, {"source": "synthetic"}, "gn-child")
    cfg = tiny_config(model="efficientnet_lite0_gn", init=str(lite0_parent), image_size=32, epochs=1)
    pre = make_preprocess(cfg, CLASSES, source)
    fit(cfg, data, tmp_path / "child", pre=pre, init=source, progress=False)
    meta = json.loads((tmp_path / "child" / "model.json").read_text())
    assert meta["architecture"] == "efficientnet_lite0_gn" and meta["init"]["matched_norm_layers"] == 49
    wrong = InitSource(lite0_parent, {**source.meta, "architecture": "basic_cnn"})
    with pytest.raises(ConfigError, match="keeps its architecture"):
        fit(cfg, data, tmp_path / "refused", pre=pre, init=wrong, progress=False)


def test_a_model_the_init_weights_do_not_fit_is_refused_naming_the_variant(lite0_parent, tmp_path, make_folder_dataset):
    import bloodcell

    data = make_folder_dataset(per_class=4, classes=CLASSES, size=32, seed=6)
    with pytest.raises(ConfigError, match=r"contradicts --init .* or give --model efficientnet_lite0_gn \(the same"):
        bloodcell.train(init=str(lite0_parent), model="resnet50", data=str(data), out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
