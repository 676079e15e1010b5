"""The Python verbs ``bloodcell.evaluate``, ``calibrate``, ``compare`` and ``report``, and their output checks."""

from __future__ import annotations

import json

import pytest

import bloodcell
from _evaluate_helpers import one_thread, tiny_model
from bloodcell.cli.main import main
from bloodcell.core.errors import ConfigError
from bloodcell.core.model_folder import read_meta


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    with one_thread():
        return tiny_model(tmp_path_factory.mktemp("verbs") / "model", steps=10)


@pytest.fixture
def data(make_folder_dataset):
    return make_folder_dataset(per_class=3, size=40)


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOODCELL_CACHE", str(tmp_path / ".cache"))
    monkeypatch.setenv("BLOODCELL_WORKERS", "1")
    with one_thread():
        yield


def test_python_verbs_are_the_cli_code(model, data, tmp_path, capsys):
    assert bloodcell.evaluate is bloodcell.evaluation.evaluate
    ev = bloodcell.evaluate(model, data, bootstrap=0, device="cpu", output=tmp_path / "ev" / "m.json", quiet=True)
    saved = json.loads((tmp_path / "ev" / "m.json").read_text())
    assert saved["metrics"]["accuracy"] == pytest.approx(ev.metrics["accuracy"])
    assert ev.summary["data"]["n_images"] == 24 and ev.summary["speed"]["device"] == "cpu"

    assert main(["evaluate", str(model), str(data), "--bootstrap", "0", "--quiet"]) == 0
    assert f"accuracy {100 * ev.metrics['accuracy']:.2f}%" in capsys.readouterr().out

    fit = bloodcell.calibrate(model, data, target_accuracy=0.9, dry_run=True, quiet=True)
    assert fit["temperature"] > 0 and "calibration" not in read_meta(model)
    fit = bloodcell.calibrate(model, data, target_accuracy=0.9, quiet=True)
    assert read_meta(model)["calibration"]["temperature"] == fit["temperature"]

    rep = bloodcell.report(model, data, output=tmp_path / "rep", bootstrap=0, mistakes=2, gradcam_per_class=1,
                           quiet=True)
    assert rep.html == tmp_path / "rep" / "report.html" and rep.html.is_file()
    assert rep.evaluation.summary["calibration"]["temperature"] == fit["temperature"]

    cmp = bloodcell.compare([tmp_path / "rep", tmp_path / "ev" / "m.json"], output=tmp_path / "cmp")
    assert [r["name"] for r in cmp.rows] == ["model", "model"]
    assert cmp.table.startswith("| Model |") and (tmp_path / "cmp" / "compare.png").is_file()
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == cmp.rows
    # Running every verb loaded every evaluation module; the package's names are still the verbs.
    for verb in ("evaluate", "calibrate", "compare", "report"):
        assert getattr(bloodcell, verb) is getattr(bloodcell.evaluation, verb) and callable(getattr(bloodcell, verb))


def test_bad_device_and_batch_size_from_python(model, data):
    with pytest.raises(ConfigError, match="--batch-size must be at least 1"):
        bloodcell.evaluate(model, data, batch_size=0)
    with pytest.raises(ConfigError, match="--device 'gpu0' is not a torch device"):
        bloodcell.calibrate(model, data, device="gpu0")


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_evaluate_output_checked_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    missing = tmp_path / "no-such-model"  # the output is refused before the model is even read
    code, err = _cli(capsys, "evaluate", missing, tmp_path, "-o", blocker / "m.json")
    assert code == 2 and "results file" in err and "afile is a file, not a folder" in err
    assert len(err.strip().splitlines()) == 1
    code, err = _cli(capsys, "evaluate", missing, tmp_path, "-o", tmp_path)
    assert code == 2 and "is a folder. Pass a file name with -o" in err
    with pytest.raises(ConfigError, match="is a folder"):
        bloodcell.evaluate(missing, tmp_path, output=tmp_path)


def test_report_output_checked_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    missing = tmp_path / "no-such-model"
    code, err = _cli(capsys, "report", missing, tmp_path, "-o", blocker / "rep")
    assert code == 2 and "Cannot write the report folder" in err and "afile/rep" in err
    code, err = _cli(capsys, "report", missing, tmp_path, "-o", blocker)
    assert code == 2 and "report folder" in err and "is an existing file, not a folder" in err
    assert not (tmp_path / "no-such-model").exists()


def test_compare_output_checked_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    missing = tmp_path / "no-such-run"
    code, err = _cli(capsys, "compare", missing, "-o", blocker / "cmp")
    assert code == 2 and "Cannot write the output folder" in err and "afile/cmp" in err
    code, err = _cli(capsys, "compare", missing, "-o", blocker)
    assert code == 2 and "is an existing file, not a folder" in err
    with pytest.raises(ConfigError, match="existing file"):
        bloodcell.compare([missing], output=blocker)
