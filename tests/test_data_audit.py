"""bloodcell audit on generated datasets with known flaws."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _data_helpers import flawed_dataset, smear
from bloodcell import ConfigError
from bloodcell.data import open_dataset
from bloodcell.data.audit.checks import AuditSettings, audit_dataset
from bloodcell.data.audit.features import FEATURE_NAMES, image_features
from bloodcell.data.audit.outliers import outlier_scores
from bloodcell.data.audit.summary import summary_text

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODCELL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def flawed(tmp_path):
    return flawed_dataset(tmp_path / "flawed")


def _ids(result, groups):
    return [sorted(result.dataset.samples[i].source_id for i in g) for g in groups]


def test_audit_finds_every_planted_flaw(flawed):
    ds = open_dataset(flawed)
    r = audit_dataset(ds, workers=1, progress=False)
    assert r.files_on_disk == 4 * 10 + 9 and r.accounted()
    (flawed / "__MACOSX" / "basophil").mkdir(parents=True)
    for n in range(3):
        (flawed / "__MACOSX" / "basophil" / f"._{n}.jpg").write_bytes(b"\0\5\26\7")
    again = audit_dataset(open_dataset(flawed), workers=1, progress=False)
    assert again.files_on_disk == 52 and again.skipped_files() == 6 and again.accounted()
    assert {ds.samples[i].source_id for i in r.unreadable} == {"lymphocyte/broken.jpg", "eosinophil/truncated.jpg"}
    assert r.unreadable[[i for i in r.unreadable if "broken" in ds.samples[i].source_id][0]] == (
        f"{flawed}/lymphocyte/broken.jpg: not a readable image (unknown or corrupt format). "
        "Remove the file or replace it with a PNG/JPEG/TIFF/BMP image.")
    assert sorted(_ids(r, r.exact_groups)) == [["basophil/basophil_000.jpg", "basophil/copy_of_000.jpg"],
                                               ["eosinophil/eosinophil_003.jpg", "lymphocyte/eo_003_again.jpg"]]
    assert _ids(r, r.near_groups) == [["platelet/platelet_005.jpg", "platelet/platelet_005_reencoded.jpg"]]
    (conflict,) = r.conflicts
    assert conflict["kind"] == "exact" and conflict["labels"] == ["eosinophil", "lymphocyte"]
    assert ds.samples[r.most_unusual(1)[0]].source_id == "basophil/odd.png"
    flagged = {ds.samples[i].source_id: f for i, f in enumerate(r.flags) if f}
    assert flagged == {"lymphocyte/broken.jpg": ["unreadable"], "eosinophil/truncated.jpg": ["unreadable"],
                       "eosinophil/eosinophil_003.jpg": ["label-conflict"],
                       "lymphocyte/eo_003_again.jpg": ["label-conflict"], "basophil/odd.png": ["outlier"]}
    g = r.group_ids
    idx = {s.source_id: i for i, s in enumerate(ds.samples)}
    assert g[idx["platelet/platelet_005.jpg"]] == g[idx["platelet/platelet_005_reencoded.jpg"]]
    assert g[idx["platelet/platelet_004.jpg"]] != g[idx["platelet/platelet_005.jpg"]]


def test_audit_report_is_json_and_summary_names_the_flaws(flawed):
    r = audit_dataset(open_dataset(flawed), workers=1, progress=False)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["files"] == {"on_disk": 49, "images": 46, "readable": 44, "unreadable": 2, "skipped": 3,
                          "skipped_files": 3, "accounted": True}
    assert len(d["images"]) == 46 and d["classes"]["basophil"]["images"] == 12
    assert d["outliers"]["most_unusual"][0]["id"] == "basophil/odd.png"
    assert "k-nearest-neighbour distance" in d["outliers"]["method"]
    text = summary_text(r)
    assert "Files: 49 on disk, all accounted for: 46 images (44 readable, 2 unreadable) + 3 skipped" in text
    assert "basophil/basophil_000.jpg = basophil/copy_of_000.jpg" in text
    assert "[exact] eosinophil/eosinophil_003.jpg (eosinophil), lymphocyte/eo_003_again.jpg (lymphocyte)" in text
    assert "basophil/.DS_123.jpg: hidden or system file ignored (named like an image, but it is macOS" in text
    assert "Flagged (left out of `bloodcell split` unless --keep-flagged): 5 images" in text


def test_near_threshold_is_configurable(flawed):
    ds = open_dataset(flawed)
    strict = audit_dataset(ds, AuditSettings(near_threshold=0), workers=1, progress=False)
    assert strict.near_groups == []
    with pytest.raises(ConfigError, match=r"near_threshold must be from 0 to 127 bits for a 256-bit hash, got 300"):
        AuditSettings(near_threshold=300)


def test_second_audit_reuses_measurements(flawed, monkeypatch):
    ds = open_dataset(flawed)
    first = audit_dataset(ds, workers=1, progress=False)
    monkeypatch.setattr("bloodcell.data.audit.facts._facts_chunk", lambda t: (_ for _ in ()).throw(AssertionError("re-measured")))
    again = audit_dataset(ds, workers=1, progress=False)
    assert again.group_ids == first.group_ids and np.allclose(again.scores, first.scores, equal_nan=True)


def test_audit_does_not_modify_the_source(flawed):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in flawed.rglob("*") if p.is_file()}
    audit_dataset(open_dataset(flawed), workers=1, progress=False)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in flawed.rglob("*") if p.is_file()}
    assert before == after


def test_odd_modes_are_measured_and_their_modes_recorded(tmp_path):
    from _data_helpers import save

    base = Image.fromarray(smear(3))
    save(base.convert("L"), tmp_path / "d" / "ig" / "gray.png")
    save(base.convert("RGBA"), tmp_path / "d" / "ig" / "rgba.png")
    save(base.convert("P"), tmp_path / "d" / "ig" / "palette.png")
    save(base.convert("CMYK"), tmp_path / "d" / "ig" / "cmyk.jpg", "JPEG")
    save(Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257), tmp_path / "d" / "ig" / "deep.png")
    r = audit_dataset(open_dataset(tmp_path / "d"), workers=1, progress=False)
    assert r.unreadable == {}
    assert sorted(f["mode"] for f in r.facts) == ["CMYK", "I;16", "L", "P", "RGBA"]
    assert r.scores is None and "not scored (fewer than 20" in summary_text(r)


def test_outlier_scores_rank_a_non_cell_image_first():
    feats = [image_features(smear(i, i % 8)) for i in range(60)]
    blank = np.full((64, 64, 3), 128, np.uint8)
    scores = outlier_scores(np.array(feats + [image_features(blank)]))
    assert scores.argmax() == 60 and scores[60] > 6 > scores[:60].max()
    assert abs(np.median(scores) - 1.0) < 0.05
    assert outlier_scores(np.array(feats[:5])) is None
    assert len(FEATURE_NAMES) == len(feats[0])


def _cli(*args, cwd, env_extra=None):
    env = {**os.environ, "PYTHONPATH": SRC, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bloodcell", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_audit_cli_writes_report_and_plots(flawed, tmp_path):
    out = tmp_path / "report"
    proc = _cli("audit", str(flawed), "-o", str(out), "--quiet", "--workers", "1", cwd=tmp_path,
                env_extra={"BLOODCELL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "Label conflicts: 1 groups (1 exact copies with different labels" in proc.stdout
    d = json.loads((out / "audit.json").read_text())
    assert d["plots"] == {"class_distribution": "class_distribution.png", "samples": "samples.png",
                          "image_sizes": "image_sizes.png", "flagged": "flagged.png",
                          "near_duplicates": "near_duplicates.png"}
    for name in d["plots"].values():
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, r"bloodcell audit: error: .*missing: no such file or folder"),
    (lambda p: p.mkdir(), r"bloodcell audit: error: .*missing: the folder is empty"),
    (lambda p: (p / "smudge_cells").mkdir(parents=True), r"unknown class folder\(s\) 'smudge_cells'"),
])
def test_audit_cli_bad_input_is_one_line(tmp_path, setup, match):
    setup(tmp_path / "missing")
    proc = _cli("audit", str(tmp_path / "missing"), "-o", str(tmp_path / "r"), cwd=tmp_path,
                env_extra={"BLOODCELL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    import re

    assert re.search(match, proc.stderr)


def test_audit_of_arrays_and_manifests(tmp_path):
    imgs = np.stack([smear(i, i % 8, size=32) for i in range(30)] + [smear(0, 0, size=32)])
    labels = np.array([i % 8 for i in range(30)] + [5])
    np.savez(tmp_path / "m.npz", train_images=imgs[:20], train_labels=labels[:20, None],
             test_images=imgs[20:], test_labels=labels[20:, None])
    r = audit_dataset(open_dataset(tmp_path / "m.npz"), workers=1, progress=False)
    assert r.files_on_disk is None and r.accounted() is None
    assert _ids(r, r.exact_groups) == [["m.npz:test/10", "m.npz:train/0"]]
    assert r.conflicts[0]["labels"] == ["basophil", "monocyte"] and r.conflicts[0]["kind"] == "exact"
    assert r.to_dict()["images"][20]["split"] == "test"
    (tmp_path / "a.png").write_bytes(b"")
    Image.fromarray(smear(1)).save(tmp_path / "a.png")
    (tmp_path / "list.csv").write_text("path,label\na.png,ig\n")
    m = audit_dataset(open_dataset(tmp_path / "list.csv"), workers=1, progress=False)
    assert m.unreadable == {} and m.group_ids[0].startswith("g")
