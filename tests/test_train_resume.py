"""Checkpoints: resume after kill -9 and Ctrl-C, and the checks that refuse a wrong resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _train_helpers import SRC, tiny_config, tiny_data
from bloodcell import ConfigError, DataError, ModelError
from bloodcell.training import fit
from bloodcell.training.state import read_checkpoint

HELPER = Path(__file__).with_name("_train_helpers.py")
CFG = {"epochs": 6, "augment": {"hflip": True, "rotate": 10}, "schedule": "cosine", "_n_train": 60}


def _history(run):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in json.loads((run / "model.json").read_text())["history"]]


def _latest_epoch(run: Path) -> int:
    try:
        return json.loads((run / "checkpoint" / "LATEST.json").read_text())["epoch"]
    except (OSError, ValueError):
        return 0


def _start(run: Path, cfg: dict, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, str(HELPER), str(run), json.dumps(cfg), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epoch(proc: subprocess.Popen, run: Path, epoch: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while _latest_epoch(run) < epoch:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "training did not reach the epoch in time"
        time.sleep(0.01)


def test_ctrl_c_then_kill_9_then_resume_reproduce_the_uninterrupted_history(tmp_path):
    overrides = {k: v for k, v in CFG.items() if not k.startswith("_")}
    reference = fit(tiny_config(**overrides), tiny_data(n_train=CFG["_n_train"]), tmp_path / "ref", progress=False)
    reference = [{k: v for k, v in h.items() if k != "seconds"} for h in reference.history]
    assert len(reference) == CFG["epochs"]
    run = tmp_path / "run"

    # Ctrl-C: the process saves what is complete, says how to continue, and exits with 130.
    proc = _start(run, CFG)
    _wait_for_epoch(proc, run, 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Interrupted during epoch" in err and "Continue with: bloodcell train --resume" in err
    assert "Traceback" not in err
    meta = json.loads((run / "model.json").read_text())
    assert meta["training"]["stopped"] == "interrupted" and len(meta["history"]) == _latest_epoch(run)
    interrupted_at = _latest_epoch(run)

    # kill -9 in the middle of the resumed run: nothing gets a chance to clean up.
    proc = _start(run, CFG, "--resume")
    _wait_for_epoch(proc, run, interrupted_at + 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _latest_epoch(run)
    assert killed_at < CFG["epochs"], "the run finished before it could be killed"

    resumed = _start(run, CFG, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1]
    assert _history(run) == reference


@pytest.fixture
def short_run(tmp_path):
    run = tmp_path / "run"
    fit(tiny_config(epochs=2), tiny_data(), run, progress=False)
    return run


def test_resume_refuses_another_architecture_or_class_set(short_run):
    with pytest.raises(ModelError, match=r"the checkpoint is a 'basic_cnn' model but this run builds 'complex_cnn'"):
        fit(tiny_config(epochs=3, model="complex_cnn", image_size=32), tiny_data(size=32), short_run, resume=True,
            progress=False)
    other = tiny_data(classes=("basophil", "eosinophil", "platelet"))
    with pytest.raises(ModelError, match=r"trained on classes \['basophil', 'lymphocyte', 'platelet'\] but the data has "
                                         r"\['basophil', 'eosinophil', 'platelet'\]"):
        fit(tiny_config(epochs=3), other, short_run, resume=True, progress=False)
    with pytest.raises(DataError, match="data manifest hash changed"):
        fit(tiny_config(epochs=3), tiny_data(seed=5), short_run, resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"resuming with different settings .*lr: 0\.003 -> 0\.1"):
        fit(tiny_config(epochs=3, lr=0.1), tiny_data(), short_run, resume=True, progress=False)


def test_resume_can_extend_a_finished_run(short_run):
    result = fit(tiny_config(epochs=3), tiny_data(), short_run, resume=True, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


def test_corrupt_checkpoint_falls_back_or_fails_clearly(short_run):
    ckpt = read_checkpoint(short_run)
    assert ckpt.epoch == 2
    # A complete older epoch folder (as left by a crash before the old one was removed) is used as fallback.
    older = short_run / "checkpoint" / "epoch-0001"
    older.mkdir()
    for name in ("model.safetensors", "state.pt"):
        (older / name).write_bytes((ckpt.folder / name).read_bytes())
    meta = dict(ckpt.meta, history=ckpt.meta["history"][:1])
    (older / "model.json").write_text(json.dumps(meta))
    import torch

    state = torch.load(ckpt.folder / "state.pt", weights_only=True)
    state["epoch"] = 1
    torch.save(state, older / "state.pt")
    (ckpt.folder / "model.safetensors").write_bytes(b"\x00garbage")
    assert read_checkpoint(short_run).epoch == 1
    (older / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match=r"no usable checkpoint .*corrupt weight file.*corrupt or not a training state"):
        fit(tiny_config(epochs=3), tiny_data(), short_run, resume=True, progress=False)
