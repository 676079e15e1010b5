"""Loop pieces: LR schedules, batches per epoch and process, class weights, macro-F1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from bloodcell.training.config import load_config
from bloodcell.training.loop import balanced_class_weights, epoch_batches, macro_f1, make_scheduler, warmup_cosine


def _lrs(cfg, steps_per_epoch):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = make_scheduler(cfg, opt, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


def test_warmup_then_cosine_to_min_lr():
    cfg = load_config(overrides={"lr": 0.01, "min_lr": 0.001, "schedule": "cosine", "warmup_epochs": 1, "epochs": 5})
    lrs = _lrs(cfg, 10)
    assert lrs[0] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.01)
    assert np.all(np.diff(lrs[:10]) > 0) and np.all(np.diff(lrs[10:]) <= 1e-12)
    assert lrs[-1] == pytest.approx(0.001, rel=0.02)
    assert warmup_cosine(0, 100, 0, 0.0, cosine=False) == 1.0


def test_onecycle_rises_then_falls():
    cfg = load_config(overrides={"lr": 0.01, "schedule": "onecycle", "warmup_epochs": 1, "epochs": 4})
    lrs = _lrs(cfg, 10)
    peak = int(lrs.argmax())
    assert 8 <= peak <= 11 and lrs.max() == pytest.approx(0.01, rel=1e-3)
    assert lrs[0] < 0.01 / 10 and lrs[-1] < 0.01 / 100


def test_epoch_batches_cover_the_data_and_reshuffle():
    n = 23
    one = np.concatenate(epoch_batches(n, 4, 1, seed=0, rank=0, world=1))
    assert sorted(one.tolist()) == list(range(n))
    again = np.concatenate(epoch_batches(n, 4, 1, seed=0, rank=0, world=1))
    other_epoch = np.concatenate(epoch_batches(n, 4, 2, seed=0, rank=0, world=1))
    assert np.array_equal(one, again) and not np.array_equal(one, other_epoch)
    # Two processes: same number of steps, together every image at least once.
    r0 = epoch_batches(n, 4, 1, 0, 0, 2)
    r1 = epoch_batches(n, 4, 1, 0, 1, 2)
    assert len(r0) == len(r1)
    assert set(np.concatenate(r0 + r1).tolist()) == set(range(n))
    # A last batch of one image (batch norm cannot train on it) is dropped.
    assert all(len(b) > 1 for b in epoch_batches(9, 4, 1, 0, 0, 1))


def test_balanced_class_weights():
    w = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert w.tolist() == pytest.approx([4 / 6, 2.0])


def test_macro_f1_matches_scikit_learn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    p[y == 4] = 4
    cm = torch.bincount(torch.tensor(y * 5 + p), minlength=25).double().view(5, 5)
    assert macro_f1(cm) == pytest.approx(f1_score(y, p, average="macro"))
