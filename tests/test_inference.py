"""predict_proba (batching, temperature, TTA) and Grad-CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodcell import DataError, PreprocessConfig
from bloodcell.networks import create_model, load_model, save_model
from bloodcell.ood.fit import fit_head
from bloodcell.ood.score import ScoredModel, extract_features, head_scores
from bloodcell.prediction.explain import gradcam, overlay
from bloodcell.prediction.torch_backend import predict_logits, predict_proba, probabilities_and_ood


@pytest.fixture
def tiny_model(tmp_path):
    torch.manual_seed(0)
    model = create_model("basic_cnn", num_classes=4).eval()
    pre = PreprocessConfig(image_size=32, class_names=("basophil", "eosinophil", "ig", "platelet"))
    folder = save_model(tmp_path / "m", model, {"architecture": "basic_cnn", "preprocess": pre.to_dict(),
                                                 "calibration": {"temperature": 2.0}})
    return load_model(folder)


def images(n=5, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def test_probabilities_sum_to_one_and_batching_does_not_matter(tiny_model):
    x = images(7)
    a = predict_proba(tiny_model, x, batch_size=3)
    b = predict_proba(tiny_model, x, batch_size=64)
    assert a.shape == (7, 4)
    np.testing.assert_allclose(a.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_temperature_is_applied(tiny_model):
    x = images(3)
    logits = predict_logits(tiny_model, x)
    cal = predict_proba(tiny_model, x)
    raw = predict_proba(tiny_model, x, calibrated=False)
    np.testing.assert_allclose(cal, torch.softmax(torch.from_numpy(logits) / 2.0, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(raw, torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-5)


def test_tta_is_the_mean_over_the_eight_views(tiny_model):
    x = images(2)
    views = [np.rot90(v, k, axes=(1, 2)) for v in (x, x[:, :, ::-1]) for k in range(4)]
    expected = np.mean([predict_proba(tiny_model, np.ascontiguousarray(v)) for v in views], axis=0)
    np.testing.assert_allclose(predict_proba(tiny_model, x, tta=True), expected, atol=1e-5)
    # Random images are not rotation-invariant, so TTA must change the answer.
    assert not np.allclose(predict_proba(tiny_model, x, tta=True), predict_proba(tiny_model, x), atol=1e-6)


def test_one_pass_gives_the_probabilities_and_scores_of_separate_passes(tiny_model):
    x = images(9, seed=3)
    plain = {k: v.detach().clone() for k, v in tiny_model.module.state_dict().items()}
    feats = extract_features(tiny_model, images(40, seed=4))
    head = fit_head(feats, np.arange(40) % 4, dims=4)
    scored = ScoredModel(tiny_model.module, 4, head).eval()
    probs, scores = probabilities_and_ood(tiny_model, scored, x, batch_size=4)
    np.testing.assert_allclose(probs, predict_proba(tiny_model, x), atol=1e-5)
    np.testing.assert_allclose(scores, head_scores(head, extract_features(tiny_model, x)), rtol=1e-4, atol=1e-5)
    tta_probs, tta_scores = probabilities_and_ood(tiny_model, scored, x, tta=True)
    np.testing.assert_allclose(tta_probs, predict_proba(tiny_model, x, tta=True), atol=1e-5)
    np.testing.assert_allclose(tta_scores, scores, rtol=1e-4, atol=1e-5)
    assert probabilities_and_ood(tiny_model, None, x)[1] is None
    # the CPU runs channels-last; the weights keep their values and still serve autograd (Grad-CAM)
    for k, v in tiny_model.module.state_dict().items():
        assert torch.equal(v, plain[k]) and not v.is_inference()
    assert gradcam(tiny_model, x[:2]).shape == (2, 32, 32)


def test_the_scored_model_holds_the_network_once_and_leaves_the_classifier_alone(tiny_model):
    head = fit_head(extract_features(tiny_model, images(40, seed=4)), np.arange(40) % 4, dims=4)
    scored = ScoredModel(tiny_model.module, 4, head)
    own = {t.data_ptr() for t in (*tiny_model.module.parameters(), *tiny_model.module.buffers())}
    assert own and all(t.data_ptr() in own for t in scored.features.parameters())
    assert not any(type(m).__name__ == "_Tap" for m in tiny_model.module.modules())  # the taps are in the copy only
    assert sum(type(m).__name__ == "_Tap" for m in scored.modules()) == 1


def test_wrong_size_is_a_clear_error(tiny_model):
    with pytest.raises(DataError, match="Images are 16x16 but the model expects 32x32"):
        predict_proba(tiny_model, images(1, 16))
    with pytest.raises(DataError, match=r"Expected prepared images as uint8 \(N, H, W, 3\)"):
        predict_proba(tiny_model, images(1).astype(np.float32))


def test_gradcam_layer_is_the_last_wide_enough_convolution():
    from torch import nn

    from bloodcell.networks import create_model
    from bloodcell.prediction.explain import target_layer

    net = create_model("efficientnet_lite0", num_classes=8).eval()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert target_layer(net) is convs[-1]
    assert target_layer(net, 448) is convs[-1]  # 14x14 at the end: wide enough already
    layer = target_layer(net, 112)
    sides = {}
    layer.register_forward_hook(lambda _m, _i, out: sides.update(side=out.shape[-1]))
    net(torch.zeros(1, 3, 112, 112))
    assert sides["side"] == 7 and convs.index(layer) < len(convs) - 1


def test_gradcam_shape_range_and_overlay(tiny_model):
    x = images(3)
    cams = gradcam(tiny_model, x)
    assert cams.shape == (3, 32, 32) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() <= 1 and cams.max() > 0.99
    over = overlay(x[0], cams[0])
    assert over.shape == (32, 32, 3) and over.dtype == np.uint8
    assert not np.array_equal(over, x[0])
    assert all(p.grad is None for p in tiny_model.module.parameters())


def test_gradcam_of_a_network_without_convolutions_is_a_clear_error():
    from torch import nn

    from bloodcell import BloodcellError
    from bloodcell.prediction.explain import target_layer

    with pytest.raises(BloodcellError, match="no convolution layer"):
        target_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)))
