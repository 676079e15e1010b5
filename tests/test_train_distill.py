"""Knowledge distillation: a teacher's probabilities as soft targets (``bloodcell train --teacher``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _train_helpers import _env, tiny_config, tiny_data  # noqa: F401 - _env: each test's own cache
from bloodcell import BloodcellError, ConfigError
from bloodcell.networks import load_model
from bloodcell.training import fit
from bloodcell.training.teacher import TEACHER_FILE, DistillLoss, _key, teacher_probabilities

CLASSES = ("basophil", "lymphocyte", "platelet")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny model trained with two classes' labels swapped: its answers differ from the labels."""
    run = tmp_path_factory.mktemp("teacher") / "model"
    data = tiny_data(classes=CLASSES)
    swap = np.array([1, 0, 2])
    data.train_labels, data.val_labels = swap[data.train_labels], swap[data.val_labels]
    fit(tiny_config(epochs=6), data, run, progress=False)
    return run


def test_the_loss_is_the_mix_of_label_cross_entropy_and_the_softened_divergence():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    probs = torch.softmax(torch.randn(5, 3), 1)
    hard = torch.nn.CrossEntropyLoss()
    t = 2.0
    target = torch.softmax(torch.log(probs) / t, 1)
    kl = (target * (torch.log(target) - F.log_softmax(logits / t, 1))).sum(1).mean() * t * t
    got = DistillLoss(hard, 0.3, t)(logits, labels, probs)
    assert torch.isclose(got, 0.7 * hard(logits, labels) + 0.3 * kl, atol=1e-6)
    assert torch.isclose(DistillLoss(hard, 1.0, t)(logits, labels, probs), kl, atol=1e-6)
    # a student that already says what the teacher says has nothing to learn from it
    same = DistillLoss(hard, 1.0, 1.0)(torch.log(probs), labels, probs)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_a_student_of_a_teacher_alone_learns_the_teachers_answers_not_the_labels(teacher, tmp_path):
    data = tiny_data(classes=CLASSES)
    says = []
    cfg = tiny_config(epochs=6, teacher=str(teacher), teacher_tta=False, distill_weight=1.0, distill_temperature=1.0)
    fit(cfg, data, tmp_path / "student", progress=False, log=says.append)
    loaded_teacher, student = load_model(teacher), load_model(tmp_path / "student")
    cached = np.load(tmp_path / "student" / TEACHER_FILE)["probs"]
    expected = teacher_probabilities(loaded_teacher, data.train_images, tta=False, progress=False)
    np.testing.assert_allclose(cached, expected, atol=1e-5)
    assert any("Teacher:" in s for s in says)
    from bloodcell.prediction.torch_backend import predict_logits

    taught = predict_logits(student, data.val_images).argmax(1)
    teacher_says = predict_logits(loaded_teacher, data.val_images).argmax(1)
    assert (taught == teacher_says).mean() >= 0.8
    assert (taught == data.val_labels).mean() <= 0.6  # the swapped classes follow the teacher


def test_tta_targets_are_cached_and_reused_on_resume(teacher, tmp_path):
    data = tiny_data(classes=CLASSES)
    cfg = tiny_config(epochs=1, teacher=str(teacher))
    fit(cfg, data, tmp_path / "run", progress=False)
    with np.load(tmp_path / "run" / TEACHER_FILE) as z:
        probs = z["probs"]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    plain = teacher_probabilities(load_model(teacher), data.train_images, tta=False, progress=False)
    assert not np.allclose(probs, plain, atol=1e-4)  # eight views averaged, not the plain answer
    says = []
    fit(tiny_config(epochs=2, teacher=str(teacher)), data, tmp_path / "run", resume=True, progress=False,
        log=says.append)
    assert any("read from" in s for s in says)


def test_a_teacher_must_know_every_class_it_teaches(teacher, tmp_path):
    data = tiny_data(classes=("basophil", "eosinophil", "platelet"))
    with pytest.raises(ConfigError, match="does not predict eosinophil"):
        fit(tiny_config(epochs=1, teacher=str(teacher)), data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model.json").exists()


def test_a_missing_or_onnx_teacher_is_one_line_before_any_data_loads(tmp_path):
    from bloodcell.training.teacher import teacher_folder

    with pytest.raises(BloodcellError, match="no such model"):
        teacher_folder(str(tmp_path / "nowhere"))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not really")
    with pytest.raises(ConfigError, match="not an exported .onnx file"):
        teacher_folder(str(onnx))


def test_cli_names_a_missing_teacher_without_a_traceback(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bloodcell", "train", "--model", "basic_cnn", "--data",
                          str(tmp_path / "cells"), "--teacher", str(tmp_path / "nowhere"), "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "nowhere: no such model" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_the_teachers_onnx_export_gives_its_pytorch_probabilities(teacher, tmp_path):
    import shutil

    from bloodcell.evaluation.calibration import view_probs
    from bloodcell.networks import save_model
    from bloodcell.packaging.onnx import export_onnx
    from bloodcell.prediction.onnx_backend import OnnxModel
    from bloodcell.prediction.torch_backend import predict_view_logits, tta_temperature
    from bloodcell.training.teacher import load_teacher

    folder = tmp_path / "teacher"
    shutil.copytree(teacher, folder)
    assert not isinstance(load_teacher(folder), OnnxModel)  # no export yet: PyTorch
    export_onnx(folder)
    onnx, torch_model = load_teacher(folder), load_model(folder)
    assert isinstance(onnx, OnnxModel)
    images = tiny_data(classes=CLASSES).val_images
    for tta in (False, True):
        np.testing.assert_allclose(teacher_probabilities(onnx, images, tta, progress=False),
                                   teacher_probabilities(torch_model, images, tta, progress=False), atol=1e-4)
    evaluation_tta = view_probs(predict_view_logits(torch_model, images), tta_temperature(torch_model))
    np.testing.assert_allclose(teacher_probabilities(torch_model, images, True, progress=False), evaluation_tta,
                               atol=1e-5)  # the same eight views as evaluation's TTA
    key = _key(folder, True, "m", CLASSES)
    with torch.no_grad():
        next(torch_model.module.parameters()).add_(0.5)
    save_model(folder, torch_model.module, torch_model.meta)
    assert _key(folder, True, "m", CLASSES) != key  # cached probabilities of the old weights are not reused
    assert not isinstance(load_teacher(folder), OnnxModel)  # an export of other weights is not used


def test_a_teacher_that_sizes_images_otherwise_gets_them_prepared_its_way(teacher, tmp_path):
    student_data = tiny_data(classes=CLASSES, size=24)
    teacher_view = tiny_data(classes=CLASSES, size=16).train_images
    asked = []

    def teacher_images(pre):
        asked.append(pre)
        return teacher_view

    with pytest.raises(ConfigError, match="crops or sizes images differently"):
        fit(tiny_config(epochs=1, image_size=24, teacher=str(teacher)), student_data, tmp_path / "refused",
            progress=False)
    fit(tiny_config(epochs=1, image_size=24, teacher=str(teacher), teacher_tta=False), student_data,
        tmp_path / "run", progress=False, teacher_images=teacher_images)
    assert [p.image_size for p in asked] == [16]
    cached = np.load(tmp_path / "run" / TEACHER_FILE)["probs"]
    expected = teacher_probabilities(load_model(teacher), teacher_view, tta=False, progress=False)
    np.testing.assert_allclose(cached, expected, atol=1e-5)
