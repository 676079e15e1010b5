"""Training's answers to awkward input: tiny schedules, tiny images, damaged checkpoints, failed and unwritable runs."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from _train_helpers import TINY, _env, tiny_config, tiny_data  # noqa: F401  (_env: autouse fixture)
from bloodcell.cli.main import main
from bloodcell.training import fit
from bloodcell.training.config import load_config
from bloodcell.training.loop import make_scheduler


@pytest.mark.parametrize("steps, warmup_epochs", [(1, 0), (2, 0), (3, 0), (100, 0.01)])
def test_onecycle_schedules_runs_of_a_few_steps(steps, warmup_epochs):
    cfg = load_config(overrides={"lr": 0.01, "schedule": "onecycle", "epochs": 1, "warmup_epochs": warmup_epochs})
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = make_scheduler(cfg, opt, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(np.isfinite(lrs)) and max(lrs) <= cfg.lr + 1e-12


def test_a_run_of_one_optimisation_step_with_onecycle(tmp_path):
    data = tiny_data(n_train=2, n_val=2)  # 6 training images, one batch of 8
    result = fit(tiny_config(epochs=1, schedule="onecycle"), data, tmp_path / "run", progress=False)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])


def test_an_image_size_too_small_for_the_architecture_is_refused_first(make_folder_dataset, tmp_path, capsys):
    root = make_folder_dataset(per_class=8, classes=("basophil", "lymphocyte", "platelet"), size=24)
    args = ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY]
    for size in ("8", "16", "24"):
        assert main([*args, "--model", "enhanced_cnn", "--image-size", size]) == 2
        err = capsys.readouterr().err
        assert f"image_size {size} is too small for 'enhanced_cnn'" in err and "--image-size 32" in err, err
    assert not (tmp_path / "cache").exists(), "images were decoded before the size was checked"
    assert not (tmp_path / "run").exists()


def test_the_advice_for_a_corrupt_checkpoint_works(tmp_path):
    run = tmp_path / "run"
    fit(tiny_config(epochs=1), tiny_data(), run, progress=False)
    for folder in (run / "checkpoint").glob("epoch-*"):
        (folder / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(Exception, match="no usable checkpoint") as info:
        fit(tiny_config(epochs=2), tiny_data(), run, resume=True, progress=False)
    # Follow the advice literally: delete what it names, then train without --resume.
    target = re.search(r"delete (\S+?)[,;)]? ", str(info.value)).group(1)
    shutil.rmtree(target)
    result = fit(tiny_config(epochs=2), tiny_data(), run, progress=False)
    assert len(result.history) == 2


class _NaN(torch.nn.Module):
    def forward(self, logits, target):
        return torch.nn.functional.cross_entropy(logits, target) * float("nan")


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(make_folder_dataset, tmp_path, monkeypatch,
                                                                        capsys):
    import bloodcell.training.trainer as trainer

    monkeypatch.setattr(trainer, "make_criterion", lambda *a, **k: _NaN())
    root = make_folder_dataset(per_class=8, classes=("basophil", "lymphocyte", "platelet"), size=24)
    out = tmp_path / "runs" / "new"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1", *TINY]) == 2
    assert "no epoch had completed" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    # A folder that existed keeps what it held, and gets nothing more.
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("kept")
    assert main(["train", "--data", str(root), "--out", str(existing), "--epochs", "1", *TINY]) == 2
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_an_out_that_cannot_be_written_is_refused_before_any_work(make_folder_dataset, tmp_path, capsys):
    root = make_folder_dataset(per_class=8, classes=("basophil", "lymphocyte", "platelet"), size=24)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, says in ((afile / "run", "Not a directory"), (afile, "is an existing file, not a folder")):
        assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1", *TINY]) == 2
        err = capsys.readouterr().err
        assert says in err and str(out) in err and "--out" in err and "Traceback" not in err, err
    assert not (tmp_path / "cache").exists(), "images were decoded before the output was checked"
