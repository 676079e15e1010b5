"""Archive-scale prediction: decoding threads ahead of the model, rows streamed to disk, --resume after kill -9,
every file format from the same rows, and int8 as a precision."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from _serve_helpers import cells, cli, tiny_model, write_png
from bloodcell import ConfigError
from bloodcell.core.errors import DataError
from bloodcell.prediction.archive import predict_to_file
from bloodcell.prediction.inputs import Item
from bloodcell.prediction.rowfile import RowFile
from bloodcell.prediction.stream import decoded_batches

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def smear(tmp_path):
    """A folder of 120 generated cells (two sub-folders) and one damaged file."""
    x, _ = cells(15, seed=3)
    for i, img in enumerate(x):
        write_png(tmp_path / "smear" / f"part_{i % 2}" / f"c{i:03d}.png", img)
    (tmp_path / "smear" / "part_0" / "broken.png").write_bytes(b"not a png")
    return tmp_path / "smear"


class _Fake(Item):
    def read(self, need=None):
        if self.source.startswith("bad"):
            raise DataError(f"{self.source}: unreadable")
        time.sleep(random.uniform(0, 0.002))  # threads finish out of order
        return np.full((4, 4, 3), int(self.source.split("-")[1]) % 256, np.uint8)


def test_batches_come_out_full_and_in_input_order_with_unreadable_ones_reported():
    items = [_Fake(f"bad-{i}" if i in (5, 17) else f"ok-{i}") for i in range(40)]
    batches = list(decoded_batches(items, lambda a: (a, None), batch_size=8, workers=3))
    assert [len(b.items) + len(b.problems) for b in batches] == [8, 8, 8, 8, 8]
    kept = [i.source for b in batches for i in b.items]
    assert kept == [f"ok-{i}" for i in range(40) if i not in (5, 17)]
    assert [q.item for b in batches for q in b.problems] == ["bad-5", "bad-17"]
    assert [int(b.images[0, 0, 0, 0]) for b in batches] == [int(b.items[0].source.split("-")[1]) for b in batches]


def test_decoding_runs_at_most_depth_batches_ahead_of_the_model():
    taken = []

    def items():
        for i in range(1000):
            taken.append(i)
            yield _Fake(f"ok-{i}")

    stream = decoded_batches(items(), lambda a: (a, None), batch_size=10, workers=2, depth=3)
    next(stream)
    time.sleep(0.2)
    assert len(taken) <= 10 * 4  # the batch handed out and at most three decoding: the input is not read ahead
    stream.close()


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_file_run_streams_rows_and_writes_the_differential_from_them(tmp_path, smear):
    out = tmp_path / "p.csv"
    result = predict_to_file([smear], out, model=tiny_model(), batch_size=16)
    rows = _rows(out)
    assert len(rows) == result.images == 120 and not (tmp_path / "p.csv.partial").exists()
    assert "true_label" not in rows[0]  # no labelled input: the same columns as -f csv on standard output
    record = json.loads((tmp_path / "p.csv.run.json").read_text())
    assert record["model"]["precision"] == "fp32" and record["images"] == 120
    assert [s["source"] for s in record["skipped"]] == [str(smear / "part_0" / "broken.png")]
    counts = {c["class"]: c["count"] for c in record["differential"]["classes"]}
    assert counts == {c: sum(r["label"] == c for r in rows) for c in counts}
    lab = record["lab_differential"]
    assert lab["total"] == 120 and lab["unreviewed"] == 120
    assert {w["class"]: w["count"] for w in lab["white_cells"]} == {
        c: sum(r["label"] == c and r["not_a_blood_cell"] in ("0", "False", "false") for r in rows)
        for c in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig")}


def test_every_format_holds_the_same_rows(tmp_path, smear):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    base = _rows(_write(tmp_path, smear, "csv"))
    lines = [json.loads(x) for x in _write(tmp_path, smear, "jsonl").read_text().splitlines()]
    doc = json.loads(_write(tmp_path, smear, "json").read_text())
    table = pq.read_table(_write(tmp_path, smear, "parquet")).to_pylist()
    assert [r["source"] for r in base] == [x["source"] for x in lines] == [x["source"] for x in doc["predictions"]]
    assert sorted(r["source"] for r in base) == sorted(r["source"] for r in table)
    assert doc["model"]["precision"] == "fp32" and doc["differential"]["total"] == len(base)
    by_source = {r["source"]: r for r in table}
    for r, x in zip(base, lines):
        assert x["label"] == r["label"] == by_source[r["source"]]["label"]
        assert x["probabilities"]["neutrophil"] == float(r["p_neutrophil"]) == by_source[r["source"]]["p_neutrophil"]


def _write(tmp_path: Path, smear: Path, fmt: str) -> Path:
    out = tmp_path / f"all.{fmt}"
    predict_to_file([smear], out, format=fmt, model=tiny_model(), batch_size=16)
    return out


def test_an_unfinished_run_is_not_overwritten_and_resumes_only_with_the_same_settings(tmp_path, smear):
    out = tmp_path / "p.csv"
    rows = RowFile(out, {"classes": ["a"], "precision": "fp32", "path": "m"})
    rows.start(resume=False)
    rows.close()
    with pytest.raises(ConfigError, match="--resume"):
        predict_to_file([smear], out, model=tiny_model())
    with pytest.raises(ConfigError, match="other settings"):
        predict_to_file([smear], out, model=tiny_model(), resume=True)


def test_resume_cuts_a_half_written_row_and_skips_finished_images(tmp_path, smear, monkeypatch):
    from bloodcell.prediction.classifier import Classifier

    full = tmp_path / "full.csv"
    predict_to_file([smear], full, model=tiny_model(), batch_size=16)
    real = Classifier.iter_predict

    def stops_after_two_batches(self, paths, **kwargs):
        it = real(self, paths, **kwargs)
        for _ in range(3):  # the start, then two batches of 16
            yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(Classifier, "iter_predict", stops_after_two_batches)
    out = tmp_path / "p.csv"
    with pytest.raises(KeyboardInterrupt):
        predict_to_file([smear], out, model=tiny_model(), batch_size=16)
    partial = tmp_path / "p.csv.partial"
    assert len(_rows(partial)) == 31 and not out.exists()  # two batches of 16, one image unreadable
    with open(partial, "a") as f:
        f.write(str(smear / "part_1" / "c099.png") + ",neutrophil,0.51")  # a row cut off by the kill
    monkeypatch.setattr(Classifier, "iter_predict", real)
    result = predict_to_file([smear], out, model=tiny_model(), batch_size=16, resume=True)
    assert (result.images, result.new) == (120, 89)
    assert out.read_text() == full.read_text()


def _partial_rows(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n") - 1
    except OSError:
        return -1


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_at_a_random_moment_then_resume_gives_the_rows_of_an_uninterrupted_run(tmp_path, smear, seed):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "bloodcell", "predict", str(smear), "-m", str(tiny_model()), "-f", "csv",
           "--batch-size", "4", "--workers", "1"]
    whole = tmp_path / "whole.csv"
    assert subprocess.run(cmd + ["-o", str(whole)], env=env, capture_output=True).returncode == 0
    out = tmp_path / "killed.csv"
    rng = random.Random(seed)
    target = rng.randrange(1, 100)
    for _ in range(4):  # a run that finished before the kill is run again, killed earlier
        proc = subprocess.Popen(cmd + ["-o", str(out)], env=env, stderr=subprocess.DEVNULL)
        while proc.poll() is None and _partial_rows(tmp_path / "killed.csv.partial") < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if not out.exists():
            break
        out.unlink()
        (tmp_path / "killed.csv.partial").unlink(missing_ok=True)
        target //= 2
    else:
        pytest.skip("four runs finished before the kill (a very fast machine)")
    r = subprocess.run(cmd + ["-o", str(out), "--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "from the resumed run" in r.stderr
    assert out.read_text() == whole.read_text()
    assert not (tmp_path / "killed.csv.partial").exists()


def test_cli_resume_and_formats_need_a_file_output(tmp_path, smear):
    r = cli("predict", str(smear), "-m", str(tiny_model()), "-f", "jsonl")
    assert r.returncode == 2 and "-o OUTPUT" in r.stderr and "Traceback" not in r.stderr
    r = cli("predict", str(smear), "-m", str(tiny_model()), "--resume")
    assert r.returncode == 2 and "--resume" in r.stderr


def test_int8_is_refused_for_a_model_without_an_int8_export(tmp_path, smear):
    r = cli("predict", str(smear), "-m", str(tiny_model()), "--precision", "int8", "-f", "csv", "-o", str(tmp_path / "p.csv"))
    assert r.returncode == 2 and "int8" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.integration
def test_default_model_reports_its_precision_and_int8_agrees_with_fp32(tmp_path, real_data):
    files = [p for name in ("neutrophil", "lymphocyte", "eosinophil") for p in sorted((real_data / name).glob("*.jpg"))[:8]]
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in files))
    got = {}
    for precision in ("fp32", "int8"):
        r = cli("predict", str(manifest), "-f", "csv", "-o", str(tmp_path / f"{precision}.csv"), "--precision", precision)
        assert r.returncode == 0 and f"{precision} on onnx" in r.stderr
        record = json.loads((tmp_path / f"{precision}.csv.run.json").read_text())
        assert record["model"]["precision"] == precision
        got[precision] = [row["label"] for row in _rows(tmp_path / f"{precision}.csv")]
    assert len(got["fp32"]) == len(got["int8"]) >= 20
    assert sum(a == b for a, b in zip(got["fp32"], got["int8"])) >= len(got["fp32"]) - 1


def test_a_thread_safe_stream_closes_its_decoders_when_the_consumer_stops():
    before = threading.active_count()
    stream = decoded_batches((_Fake(f"ok-{i}") for i in range(100)), lambda a: (a, None), batch_size=5, workers=2)
    next(stream)
    stream.close()
    assert threading.active_count() <= before


def test_the_python_verb_streams_a_file_run_and_keeps_tta(tmp_path):
    """``bloodcell.predict(..., output=, resume=)`` is the command's file route, and ``--tta`` reaches a
    run written to a file (it was dropped there: the rows were those of the plain model)."""
    import bloodcell
    from bloodcell.cli.main import main
    from bloodcell.prediction.archive import ArchiveResult
    from bloodcell.prediction.classifier import Classifier

    x, _ = cells(1, seed=5)
    for i, img in enumerate(x):
        write_png(tmp_path / "few" / f"c{i}.png", img)
    assert main(["predict", str(tmp_path / "few"), "-m", str(tiny_model()), "--tta", "-o", str(tmp_path / "t.csv")]) == 0
    run = json.loads((tmp_path / "t.csv.run.json").read_text())
    assert run["model"]["tta"] is True and run["model"]["backend"] == "torch"
    written = {r["source"]: float(r["p_neutrophil"]) for r in _rows(tmp_path / "t.csv")}
    averaged = Classifier(tiny_model(), tta=True).predict([tmp_path / "few"]).predictions
    plain = Classifier(tiny_model(), backend="torch").predict([tmp_path / "few"]).predictions
    assert [written[p.source] for p in averaged] == pytest.approx([p.probabilities["neutrophil"] for p in averaged], abs=2e-6)
    assert [written[p.source] for p in plain] != pytest.approx([p.probabilities["neutrophil"] for p in plain], abs=2e-6)
    result = bloodcell.predict(tmp_path / "few", tiny_model(), format="jsonl", output=tmp_path / "p.jsonl")
    assert isinstance(result, ArchiveResult) and result.images == 8
    unfinished = RowFile(tmp_path / "u.csv", run["model"])
    unfinished.start(resume=False)
    unfinished.close()
    with pytest.raises(ConfigError, match=r"\(tta differ"):  # a plain run does not continue a TTA one
        bloodcell.predict(tmp_path / "few", tiny_model(), format="csv", output=tmp_path / "u.csv", resume=True,
                          backend="torch")
    with pytest.raises(ConfigError, match="--resume continues"):
        bloodcell.predict(tmp_path / "few", tiny_model(), resume=True)
    with pytest.raises(ConfigError, match="--engine ray"):
        bloodcell.predict(tmp_path / "few", tiny_model(), engine="ray", format="csv", output=tmp_path / "r.csv")
