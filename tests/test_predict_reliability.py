"""bloodcell predict on hostile inputs and outputs: unwritable outputs, link loops, unreadable images,
meaningless thresholds, and results kept when a run stops part-way."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

from _serve_helpers import cells, cli, tiny_model, write_png
from bloodcell import BloodcellError, ConfigError
from bloodcell.prediction import classifier as classifier_module
from bloodcell.prediction import inputs
from bloodcell.prediction.classifier import Classifier
from bloodcell.prediction.inputs import collect


@pytest.fixture
def two_cells(tmp_path):
    x, _ = cells(1, seed=7)
    folder = tmp_path / "smear"
    write_png(folder / "a.png", x[0])
    write_png(folder / "b.png", x[3])
    return folder


def _unwritable(tmp_path, kind):
    (tmp_path / "afile").write_text("a plain file")
    (tmp_path / "afolder").mkdir()
    return {"under-a-file": tmp_path / "afile" / "p.csv", "a-folder": tmp_path / "afolder",
            "proc": "/proc/x/p.csv"}[kind]


@pytest.mark.parametrize("kind", ["under-a-file", "a-folder", "proc"])
def test_unwritable_output_is_refused_before_the_model_loads(tmp_path, two_cells, monkeypatch, kind):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(classifier_module, "Classifier", no_model)
    with pytest.raises(ConfigError, match="output file"):
        classifier_module.predict([two_cells], tiny_model(), format="csv", output=_unwritable(tmp_path, kind))


def test_cli_unwritable_output_is_one_line(tmp_path, two_cells):
    write_png(tmp_path / "a.png", cells(1, seed=1)[0][0])
    r = cli("predict", str(two_cells), "-m", str(tiny_model()), "-o", str(tmp_path / "a.png" / "p.csv"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "a.png is a file, not a folder" in r.stderr


def test_rows_classified_before_a_failure_are_kept(tmp_path, two_cells, monkeypatch):
    real = Classifier.iter_predict

    def stops_after_the_first_chunk(self, paths, **kwargs):
        it = real(self, paths, chunk=1)
        yield next(it)  # the problems found while collecting
        yield next(it)  # one image classified
        raise KeyboardInterrupt

    monkeypatch.setattr(Classifier, "iter_predict", stops_after_the_first_chunk)
    out = tmp_path / "p.csv"
    with pytest.raises(KeyboardInterrupt):
        classifier_module.predict([two_cells], tiny_model(), format="csv", output=out)
    assert not out.exists()
    rows = list(csv.DictReader((tmp_path / "p.csv.partial").open()))
    assert [r["source"].endswith("a.png") for r in rows] == [True] and rows[0]["p_platelet"]


def test_rows_are_kept_when_the_final_write_fails(tmp_path, two_cells, monkeypatch):
    from bloodcell.prediction import outputs

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs, "write_text", full_disk)
    with pytest.raises(OSError):
        classifier_module.predict([two_cells], tiny_model(), format="json", output=tmp_path / "p.json")
    assert len(list(csv.DictReader((tmp_path / "p.json.partial").open()))) == 2


def test_completed_run_writes_the_same_output_and_no_partial_file(tmp_path, two_cells):
    out = tmp_path / "p.json"
    result = classifier_module.predict([two_cells], tiny_model(), format="json", output=out)
    assert out.read_text() == result.text and not (tmp_path / "p.json.partial").exists()
    doc = json.loads(result.text)
    assert len(doc["predictions"]) == 2 and doc["differential"]["counted"] == 2
    shown = classifier_module.predict([two_cells], tiny_model(), format="json")
    assert shown.output is None and shown.text == result.text


def test_link_loops_in_a_folder_are_reported_and_nothing_counted_twice(tmp_path, two_cells):
    os.symlink("x.jpg", two_cells / "x.jpg")
    os.symlink(".", two_cells / "loop")
    os.symlink("a.png", two_cells / "again.png")
    items, problems = collect([two_cells])
    names = sorted(os.path.basename(i.source) for i in items)
    assert names == ["a.png", "b.png"]
    kinds = {p.kind: p.message for p in problems}
    assert "loops back on itself" in kinds["link-loop"] and "x.jpg" in kinds["link-loop"]
    assert "loop" in kinds["linked-folder"] and "again.png" in kinds["repeated"]


def test_cli_link_loop_is_no_traceback(two_cells):
    os.symlink("x.jpg", two_cells / "x.jpg")
    os.symlink(".", two_cells / "loop")
    r = cli("predict", str(two_cells), "-m", str(tiny_model()), "-f", "json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "x.jpg: skipped, a symbolic link that loops back on itself" in r.stderr
    assert len(json.loads(r.stdout)["predictions"]) == 2


def test_permission_denied_image_is_skipped_not_fatal(two_cells, monkeypatch):
    real = inputs.decode_image

    def denied(path, name=None, **kwargs):
        if str(path).endswith("a.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, name, **kwargs)

    monkeypatch.setattr(inputs, "decode_image", denied)
    run = Classifier(tiny_model()).predict([two_cells])
    assert [os.path.basename(p.source) for p in run.predictions] == ["b.png"]
    assert [p.kind for p in run.problems] == ["unreadable"]
    assert "a.png" in run.problems[0].message and "Permission denied" in run.problems[0].message


def test_pipe_named_like_an_image_is_skipped_without_reading(two_cells):
    os.mkfifo(two_cells / "pipe.jpg")
    items, problems = collect([two_cells])
    assert sorted(os.path.basename(i.source) for i in items) == ["a.png", "b.png"]
    assert any("pipe.jpg" in p.message and "not a regular file" in p.message for p in problems)
    items, problems = collect([two_cells / "pipe.jpg"])
    assert items == [] and "not a regular file" in problems[0].message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
def test_meaningless_ood_threshold_is_refused(value):
    with pytest.raises(ConfigError, match="ood_threshold must be a finite score"):
        Classifier(tiny_model(), ood_threshold=value)


def test_cli_ood_threshold_nan_is_one_line():
    r = cli("predict", "x.png", "-m", str(tiny_model()), "--ood-threshold", "nan")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "finite" in r.stderr


def test_python_verb_is_the_cli(tmp_path, two_cells):
    import bloodcell

    result = bloodcell.predict(two_cells, tiny_model(), format="csv")
    r = cli("predict", str(two_cells), "-m", str(tiny_model()), "-f", "csv")
    assert r.stdout == result.text and len(result.predictions) == 2 and result.differential.counted == 2
    with pytest.raises(BloodcellError, match="format must be one of"):
        bloodcell.predict(two_cells, tiny_model(), format="xml")


def test_folder_that_cannot_be_listed_is_reported(two_cells, monkeypatch):
    real = os.scandir

    def denied(path="."):
        if os.path.basename(str(path)) == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    (two_cells / "locked").mkdir()
    monkeypatch.setattr(os, "scandir", denied)
    items, problems = collect([two_cells])
    assert len(items) == 2
    assert any("locked" in p.message and "cannot be read" in p.message for p in problems)


@pytest.mark.parametrize("option", [("--threads", "0"), ("--threads", "-1"), ("--workers", "0"), ("--workers", "-3")])
def test_thread_counts_below_one_are_refused(two_cells, option, capsys):
    """0 or a negative count ran on the default counts (or onnxruntime's own) without a word."""
    from bloodcell.cli.main import main

    assert main(["predict", str(two_cells), "-m", str(tiny_model()), *option]) == 2
    err = capsys.readouterr().err
    assert "must be at least 1" in err and option[1] in err and "Traceback" not in err


def test_decoding_threads_below_one_are_refused_from_python(two_cells):
    with pytest.raises(ConfigError, match="workers .* must be at least 1"):
        Classifier(tiny_model()).predict([two_cells], workers=0)
