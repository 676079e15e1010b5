"""Training on tiny generated data: the model folder contract, determinism, early stopping, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _train_helpers import tiny_config, tiny_data
from bloodcell import ConfigError, DataError
from bloodcell.core.preprocess import normalize
from bloodcell.networks import load_model
from bloodcell.training import fit
from bloodcell.training.loop import epoch_batches
from bloodcell.training.trainer import TrainData

HISTORY_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "seconds"}


def _without_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_run_folder_is_a_model_folder_per_the_contract(tmp_path):
    data = tiny_data()
    result = fit(tiny_config(epochs=4, augment={"hflip": True, "rot90": True}), data, tmp_path / "run",
                 progress=False)
    run = tmp_path / "run"
    for name in ("model.json", "model.safetensors", "config.yaml", "history.csv", "history.json", "curves.png"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "model.json").read_text())
    assert meta["format"] == "bloodcell-model/1" and meta["architecture"] == "basic_cnn"
    assert meta["preprocess"]["class_names"] == list(data.class_names) and meta["preprocess"]["image_size"] == 16
    assert meta["data_manifest_sha256"] == data.manifest_sha256
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3, 4]
    assert all(set(h) == HISTORY_KEYS for h in meta["history"])
    assert meta["config"]["model"] == "basic_cnn" and meta["config"]["precision"] == "fp32"
    best = meta["metrics"]["best_epoch"]
    assert meta["metrics"]["val_loss"] == min(h["val_loss"] for h in meta["history"])
    assert meta["history"][best - 1]["val_acc"] == meta["metrics"]["val_acc"] == result.metrics["val_acc"]
    # The easy synthetic classes are learnt.
    assert meta["metrics"]["val_acc"] >= 0.9
    # The saved model reproduces the best epoch's validation accuracy through the shared preprocessing.
    loaded = load_model(run)
    with torch.no_grad():
        pred = loaded.module(torch.from_numpy(normalize(data.val_images, loaded.preprocess))).argmax(1).numpy()
    assert np.mean(pred == data.val_labels) == pytest.approx(meta["metrics"]["val_acc"])
    lines = (run / "history.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,train_acc,val_loss,val_acc,val_macro_f1,lr,seconds" and len(lines) == 5


def test_two_runs_of_one_config_give_identical_history(tmp_path):
    cfg = tiny_config(model="enhanced_cnn", image_size=32, epochs=2, lr=0.001, schedule="cosine", warmup_epochs=0.5,
                      augment={"hflip": True, "rotate": 10, "brightness": 0.1, "stain": 0.05}, label_smoothing=0.1)
    data = tiny_data(size=32, n_train=12, n_val=6)
    a = fit(cfg, data, tmp_path / "a", progress=False)
    b = fit(cfg, data, tmp_path / "b", progress=False)
    assert _without_seconds(a.history) == _without_seconds(b.history)
    c = fit(tiny_config(**{**cfg.to_dict(), "seed": 1}), data, tmp_path / "c", progress=False)
    assert _without_seconds(c.history) != _without_seconds(a.history)


def test_early_stopping_on_the_monitored_metric(tmp_path):
    cfg = tiny_config(epochs=10, patience=2, monitor="val_acc", min_delta=0.5)
    result = fit(cfg, tiny_data(), tmp_path / "run", progress=False)
    assert result.stopped == "early_stopping" and len(result.history) == 3 and result.best_epoch == 1
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["training"]["stopped"] == "early_stopping"


def test_options_adamw_onecycle_class_weights_bf16_reach_the_run(tmp_path, monkeypatch):
    import bloodcell.training.trainer as trainer

    made = {}

    def spy(name, make):
        def wrapper(*args, **kwargs):
            made[name] = make(*args, **kwargs)
            return made[name]
        monkeypatch.setattr(trainer, name, wrapper)

    for name in ("make_optimizer", "make_criterion", "make_scheduler"):
        spy(name, getattr(trainer, name))
    data = tiny_data()
    keep = data.train_labels != 2
    keep[np.flatnonzero(data.train_labels == 2)[:4]] = True  # an imbalanced class
    data = TrainData(data.train_images[keep], data.train_labels[keep], data.val_images, data.val_labels,
                     data.class_names)
    cfg = tiny_config(optimizer="adamw", weight_decay=0.01, schedule="onecycle", class_weights="balanced",
                      precision="bf16", grad_clip=1.0, epochs=2, monitor="val_macro_f1")
    result = fit(cfg, data, tmp_path / "run", progress=False)
    assert len(result.history) == 2 and all(np.isfinite(h["train_loss"]) for h in result.history)
    opt = made["make_optimizer"]
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.01
    assert type(made["make_scheduler"]) is torch.optim.lr_scheduler.OneCycleLR
    # The history's lr is the one-cycle curve: the rate of each epoch's last step.
    model = torch.nn.Linear(1, 1)
    ref_opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    steps = len(epoch_batches(len(data.train_labels), cfg.batch_size, 1, cfg.seed, 0, 1))
    assert steps == 7  # 52 training images in batches of 8, the last one of 4
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.3)
    lrs = []
    for _ in range(cfg.epochs * steps):
        lrs.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert [h["lr"] for h in result.history] == pytest.approx([lrs[steps - 1], lrs[-1]])
    assert result.history[0]["lr"] > cfg.lr / 2 > result.history[1]["lr"]
    counts = np.bincount(data.train_labels, minlength=3)
    expected = counts.sum() / (3 * counts)
    assert made["make_criterion"].weight.tolist() == pytest.approx(expected.tolist())
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["training"]["precision"] == "bf16" and meta["config"]["precision"] == "bf16"
    assert meta["config"]["class_weights"] == "balanced" and meta["config"]["optimizer"] == "adamw"


def test_training_normaliser_matches_the_shared_preprocessing():
    from bloodcell.core.preprocess import PreprocessConfig
    from bloodcell.training.loop import Normalizer

    images = tiny_data().val_images[:5]
    pre = PreprocessConfig(image_size=16, mean=(0.6, 0.5, 0.7), std=(0.2, 0.25, 0.15), class_names=("a", "b"))
    x01 = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)  # as the training loop feeds it
    ours = Normalizer(pre, "cpu")(x01).numpy()
    assert ours.shape == (5, 3, 16, 16)
    np.testing.assert_allclose(ours, normalize(images, pre), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours, normalize(torch.from_numpy(images), pre).numpy(), rtol=0, atol=1e-6)


def test_a_split_missing_a_class_is_refused(tmp_path):
    data = tiny_data()
    keep = data.val_labels != 2
    bad = TrainData(data.train_images, data.train_labels, data.val_images[keep], data.val_labels[keep],
                    data.class_names)
    with pytest.raises(DataError, match=r"The validation split has no images of 'platelet'"):
        fit(tiny_config(), bad, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_wrong_image_size_and_existing_run_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"must be uint8 \(N, 24, 24, 3\)"):
        fit(tiny_config(image_size=24), tiny_data(), tmp_path / "run", progress=False)
    fit(tiny_config(epochs=1), tiny_data(), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"already holds a training run\. Continue it with --resume"):
        fit(tiny_config(epochs=1), tiny_data(), tmp_path / "run", progress=False)


class _NaNAfter(torch.nn.Module):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls
        self.inner = torch.nn.CrossEntropyLoss()

    def forward(self, logits, target):
        self.calls -= 1
        loss = self.inner(logits, target)
        return loss * float("nan") if self.calls < 0 else loss


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_epoch(tmp_path, monkeypatch):
    import bloodcell.training.trainer as fit_module

    steps_per_epoch = 9  # 72 images, batch 8
    monkeypatch.setattr(fit_module, "make_criterion", lambda *a, **k: _NaNAfter(steps_per_epoch + 3))
    with pytest.raises(ConfigError, match=r"loss became nan at epoch 2, step 4; the last good checkpoint \(epoch 1\) "
                                          r"is kept in .*Fix: lower the learning rate"):
        fit(tiny_config(epochs=3), tiny_data(), tmp_path / "run", progress=False)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert len(meta["history"]) == 1 and meta["training"]["stopped"] == "diverged"
    assert json.loads((tmp_path / "run" / "checkpoint" / "LATEST.json").read_text())["epoch"] == 1
    load_model(tmp_path / "run")  # the kept model is usable
