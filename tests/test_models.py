"""Every registered architecture: forward, backward, finite outputs; weights and model files."""

from __future__ import annotations

import json

import pytest
import torch

from bloodcell import ModelError, PreprocessConfig
from bloodcell.core.model_folder import META
from bloodcell.networks import create_model, list_models, load_model, save_model
from bloodcell.networks.pretrained import map_state_dict


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("side", [1, 3, 4, 6, 7, 9, 14])
def test_adaptive_pool_equals_torchs(side):
    import torch.nn.functional as F

    from bloodcell.networks.custom_cnn import AdaptiveAvgPool

    x = torch.randn(2, 5, side, side + 2)
    torch.testing.assert_close(AdaptiveAvgPool(4)(x), F.adaptive_avg_pool2d(x, 4), atol=1e-6, rtol=1e-5)
    cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(AdaptiveAvgPool(4)(cl), F.adaptive_avg_pool2d(x, 4), atol=1e-6, rtol=1e-5)


def test_unknown_model_suggests():
    with pytest.raises(ModelError, match=r"Unknown model 'resnet5'\. Did you mean 'resnet50'"):
        create_model("resnet5")


def test_lite0_package_weights_map_onto_timm():
    scratch = create_model("efficientnet_lite0", num_classes=8)
    model = create_model("efficientnet_lite0", num_classes=8, pretrained=True)
    stem_changed = not torch.equal(scratch.conv_stem.weight, model.conv_stem.weight)
    assert stem_changed
    # ImageNet BN statistics are loaded, not the fresh (0, 1) ones.
    assert not torch.allclose(model.bn1.running_var, torch.ones_like(model.bn1.running_var))


def test_mapping_refuses_other_architecture():
    lite = create_model("efficientnet_lite0").state_dict()
    with pytest.raises(ModelError, match="different architectures|does not fit"):
        map_state_dict(lite, create_model("mobilenetv2_100"))


def test_save_load_round_trip(tmp_path):
    model = create_model("basic_cnn", num_classes=3).eval()
    pre = PreprocessConfig(image_size=32, class_names=("basophil", "ig", "platelet"))
    save_model(tmp_path / "m", model, {"architecture": "basic_cnn", "preprocess": pre.to_dict()})
    loaded = load_model(tmp_path / "m")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded.module(x), model(x))
    assert loaded.class_names == ("basophil", "ig", "platelet")
    (tmp_path / "m" / META).write_text("{broken")
    with pytest.raises(ModelError, match="corrupt model metadata"):
        load_model(tmp_path / "m")


def test_load_refuses_non_model(tmp_path):
    with pytest.raises(ModelError, match="no model here"):
        load_model(tmp_path)
    (tmp_path / META).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ModelError, match="not a bloodcell model file"):
        load_model(tmp_path)


def test_models_verb_lists_every_architecture():
    import bloodcell

    rows = bloodcell.models()
    assert [r["name"] for r in rows] == list_models()
    lite0 = next(r for r in rows if r["name"] == "efficientnet_lite0")
    assert lite0["pretrained"].startswith("package:") and lite0["default_size"] == 224 and lite0["family"] == "timm"
