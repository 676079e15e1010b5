"""The pipelines behind `make train-default`, `make zoo` and `make zoo-table`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bloodcell
from bloodcell.core.classes import CLASSES
from bloodcell.core.model_folder import ONNX, WEIGHTS, adapt_start, is_trained, read_meta, write_meta
from bloodcell.core.settings import usable_cpus
from bloodcell.pipelines import members as runner
from bloodcell.pipelines.spec import Member, Spec, compare_list, default_spec, zoo_spec
from conftest import synthetic_cell

REPO = Path(__file__).resolve().parents[1]
TINY = ["--max-train-samples", "64", "--epochs", "1", "--image-size", "32", "--batch-size", "16"]


@pytest.fixture(scope="module")
def split_manifest(tmp_path_factory) -> Path:
    """A split manifest of 20 synthetic cells per class (enough held-out cells for packaging)."""
    root = tmp_path_factory.mktemp("pipeline_data")
    rng = np.random.default_rng(0)
    splits = ["train"] * 14 + ["val"] * 2 + ["test"] * 4
    rows = ["path,label,split"]
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i, split in enumerate(splits):
            path = root / name / f"{i:02d}.png"
            Image.fromarray(synthetic_cell(rng, label, 40)).save(path)
            rows.append(f"{path},{name},{split}")
    manifest = root / "split.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_the_compare_list_is_the_zoo_and_default_specs():
    zoo, default = zoo_spec("s.csv", "z"), default_spec("s.csv", "d")
    # the list `make zoo-table` compared when it was written out by hand
    assert compare_list(zoo, default) == [
        "z/basic_cnn", "z/basic_cnn_augmented", "z/complex_cnn", "z/enhanced_cnn",
        "z/ensemble_3arch/efficientnet_b3", "z/ensemble_3arch/mobilenetv2_100", "z/ensemble_3arch/resnet50",
        "z/ensemble_3arch/ensemble", "d/lite0_seed0", "d/lite0_seed1", "d/ensemble", "d/distilled"]
    assert [m.args[:2] for m in zoo.members] == [("--epochs", "10"), ("--epochs", "10"), ("--epochs", "8"),
                                                 ("--epochs", "8"), ("--epochs", "4")]


def test_members_train_on_one_thread_each_and_the_distilled_network_on_every_core():
    spec = default_spec("s.csv", "d")
    member, distilled = spec.members[0], spec.distilled
    assert runner.train_command(spec, member)[-3:] == ["--threads", "1", "--no-progress"]
    command = runner.train_command(spec, distilled)
    assert command[-3:] == ["--threads", str(usable_cpus()), "--no-progress"]
    # it learns from the members' ensemble, with its own seed
    assert command[command.index("--teacher") + 1] == str(Path("d") / "ensemble")
    assert command[command.index("--seed") + 1] == "2" and command[command.index("--out") + 1] == str(Path("d/distilled"))


def test_bad_specs_are_refused():
    with pytest.raises(bloodcell.ConfigError, match="RECIPE:EPOCHS"):
        zoo_spec("s.csv", study=["basic_cnn"])
    with pytest.raises(bloodcell.ConfigError, match="two or more different seeds"):
        default_spec("s.csv", seeds=[3])
    with pytest.raises(bloodcell.ConfigError, match="bloodcell split"):
        bloodcell.pipeline("default", data="/nonexistent/split.csv")
    with pytest.raises(bloodcell.ConfigError, match="Unknown pipeline"):
        bloodcell.pipeline("zooo", data=str(REPO / "Makefile"))


def test_fresh_members_start_half_finished_ones_resume_finished_ones_are_skipped(tmp_path):
    spec = Spec("t", tmp_path, Path("s.csv"), (Member("a", "basic_cnn", ("--seed", "1")),), ("--epochs", "1"))
    member = spec.members[0]
    fresh = runner.train_command(spec, member)
    assert fresh[fresh.index("--recipe") + 1] == "basic_cnn" and "--resume" not in fresh
    assert fresh[fresh.index("--seed"):] == ["--seed", "1", "--epochs", "1", "--threads", "1", "--no-progress"]
    (tmp_path / "a").mkdir()
    write_meta(tmp_path / "a", {"architecture": "basic_cnn", "training": {"stopped": "interrupted"}})
    assert runner.train_command(spec, member)[4:6] == ["--resume", str(tmp_path / "a")]
    assert not runner.is_finished(spec, member)
    write_meta(tmp_path / "a", {"architecture": "basic_cnn", "training": {"stopped": "completed"}})
    said = []
    assert runner.train_members(spec, say=said.append) == []
    assert said == ["a: trained"]


def test_an_ensemble_recipe_member_is_finished_only_with_every_part_and_its_ensemble(tmp_path):
    spec = zoo_spec("s.csv", tmp_path, study=[], ensemble_epochs=1)
    (member,) = spec.members
    for part in member.parts:
        write_meta(tmp_path / member.name / part, {"training": {"stopped": "completed"}})
    assert not runner.is_finished(spec, member)
    write_meta(tmp_path / member.name / "ensemble", {"ensemble": {"members": []}})
    assert runner.is_finished(spec, member)


def test_a_failed_member_raises_after_printing_its_log_tail(tmp_path, monkeypatch):
    spec = Spec("t", tmp_path, Path("s.csv"), (Member("ok", "x"), Member("bad", "x")))
    scripts = {"ok": "print('fine')", "bad": "import sys; print('line 1'); print('cuda exploded'); sys.exit(3)"}
    monkeypatch.setattr(runner, "train_command", lambda s, m: [sys.executable, "-c", scripts[m.name]])
    said = []
    with pytest.raises(runner.MemberFailed, match="Training failed for bad"):
        runner.train_members(spec, jobs=2, say=said.append)
    report = next(s for s in said if s.startswith("bad failed"))
    assert "exit status 3" in report and "cuda exploded" in report
    assert "ok: trained" in said and (tmp_path / "ok.log").read_text() == "fine\n"


def test_a_member_past_its_time_limit_is_stopped(tmp_path, monkeypatch):
    spec = Spec("t", tmp_path, Path("s.csv"), (Member("slow", "x"),))
    monkeypatch.setattr(runner, "train_command", lambda s, m: [sys.executable, "-c", "import time; time.sleep(120)"])
    said = []
    with pytest.raises(runner.MemberFailed):
        runner.train_members(spec, timeout=1, say=said.append)
    assert any("stopped after 1 s" in s for s in said)


def test_default_pipeline_end_to_end_resuming_after_a_member_finished(split_manifest, tmp_path):
    run, package = tmp_path / "default", tmp_path / "package"
    seed0 = default_spec(split_manifest, run, recipe="basic_cnn", train_args=TINY).members[0]
    # a first run stopped after seed 0 finished
    assert runner.train_members(Spec("default", run, split_manifest, (seed0,), tuple(TINY)), say=print) == [seed0.name]
    kept = (run / seed0.name / WEIGHTS).stat().st_mtime_ns
    result = bloodcell.pipeline("default", data=split_manifest, default_run=run, package=package,
                                card=REPO / "cards" / "default.yaml", recipe="basic_cnn", train_args=TINY, say=print)
    assert result["trained"] == ["lite0_seed1"]
    assert (run / seed0.name / WEIGHTS).stat().st_mtime_ns == kept
    assert all(is_trained(run / m) and "calibration" in read_meta(run / m) for m in ("lite0_seed0", "lite0_seed1"))
    assert (run / "lite0_seed1.log").is_file() and (run / "test_metrics.json").is_file()
    # the network distilled from the members' ensemble is what the package predicts with
    distilled = read_meta(run / "distilled")
    assert distilled["config"]["teacher"] == str(run / "ensemble") and "calibration" in distilled
    assert result["distilled"] == str(run / "distilled") and (run / "distilled.log").is_file()
    meta = read_meta(package)
    assert "ensemble" not in meta and meta["architecture"] == "basic_cnn" and meta["model_card"]["metrics"]
    assert "ood" in meta and (package / ONNX).is_file() and (package / WEIGHTS).is_file()
    assert "test split" in meta["model_card"]["metrics"]["evaluated_on"]
    # and the ensemble it learnt from ships inside it, for `adapt` to start from
    assert adapt_start(package) == package / "adapt_from"
    inside = read_meta(package / "adapt_from")
    assert inside["ensemble"]["members"] == ["member_0", "member_1"] and "calibration" in inside
    assert inside["training_cell_share"] > 0 and "ood" not in inside and not (package / "adapt_from" / ONNX).exists()
