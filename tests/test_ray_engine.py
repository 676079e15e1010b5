"""bloodcell predict --engine ray: a local Ray instance with two model actors gives the rows of the local path.

The comparison uses 400 real PBC cells (50 of each class); ``benchmarks/predict_scale.py``
measures both engines' speed on 1,000 to 100,000 images.
"""

from __future__ import annotations

import json

import pytest

from _serve_helpers import cli

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'bloodcell[ray]' (it is in the dev extra)")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (it comes with bloodcell[ray])")


@pytest.mark.integration
def test_ray_engine_gives_the_rows_of_the_local_path(tmp_path, real_data):
    from bloodcell.core.classes import CLASSES

    files = [p for name in CLASSES for p in sorted((real_data / name).glob("[!.]*.jpg"))[:50]]
    assert len(files) == 400
    manifest = tmp_path / "images.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in files)
                        + f"{tmp_path / 'gone.jpg'},monocyte\n")
    r = cli("predict", str(manifest), "--engine", "ray", "--workers", "2", "-f", "parquet", "-o", str(tmp_path / "ray"),
            "--precision", "fp32", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fp32 on onnx" in r.stderr
    (tmp_path / "gone.jpg").write_bytes(b"")  # the local path refuses a manifest naming a missing file
    local = tmp_path / "local"
    r = cli("predict", str(manifest), "-f", "parquet", "-o", str(local), "--precision", "fp32")
    assert r.returncode == 0, r.stderr[-3000:]
    by_ray = sorted(pq.read_table(tmp_path / "ray").to_pylist(), key=lambda row: row["source"])
    by_local = sorted(pq.read_table(local).to_pylist(), key=lambda row: row["source"])
    assert len(by_ray) == len(files) and by_ray == by_local
    assert pq.read_schema(next((tmp_path / "ray").glob("*.parquet"))).names == pq.read_schema(next(local.glob("*.parquet"))).names
    record = json.loads((tmp_path / "ray" / "_run.json").read_text())
    assert record["model"]["precision"] == "fp32" and record["images"] == len(files)
    assert [s["source"] for s in record["skipped"]] == [str(tmp_path / "gone.jpg")]
    assert record["differential"]["total"] == len(files)
    assert "warning" in record and record["warning"] is None  # too few cells to judge


def test_ray_engine_needs_parquet_output(tmp_path):
    r = cli("predict", str(tmp_path / "x.csv"), "--engine", "ray", "-f", "csv", "-o", str(tmp_path / "o.csv"))
    assert r.returncode == 2 and "-f parquet" in r.stderr and "Traceback" not in r.stderr


RESUME_SCRIPT = r"""
import json, sys
from pathlib import Path
import bloodcell.prediction.ray_engine as engine
from bloodcell.core.errors import ConfigError

manifest, out = Path(sys.argv[1]), Path(sys.argv[2])
engine.PART_IMAGES = 4
written, write = [], engine._Parts.write

def stop_at_part_1(self, i, ds):
    if i == 1 and "stopped" not in written:
        written.append("stopped")
        raise KeyboardInterrupt
    written.append(i)
    write(self, i, ds)

engine._Parts.write = stop_at_part_1
report = {}
try:
    engine.predict_ray(manifest, out, workers=1, precision="fp32")
except KeyboardInterrupt:
    report["parts_after_stop"] = sorted(p.name for p in out.with_name(out.name + ".ray-partial").glob("part-*"))
for name, kwargs in (("without_resume", {}), ("other_precision", {"resume": True, "precision": "int8"})):
    try:
        engine.predict_ray(manifest, out, workers=1, **{"precision": "fp32", **kwargs})
    except ConfigError as e:
        report[name] = str(e)
result = engine.predict_ray(manifest, out, workers=1, precision="fp32", resume=True)
report.update(written=written, images=result.images, partial_left=out.with_name(out.name + ".ray-partial").exists())
print("REPORT" + json.dumps(report))
"""


@pytest.mark.integration
def test_a_stopped_ray_run_resumes_from_its_first_unfinished_part(tmp_path, real_data):
    import subprocess
    import sys

    files = sorted((real_data / "basophil").glob("[!.]*.jpg"))[:10]
    manifest = tmp_path / "images.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in files) + f"{tmp_path / 'gone.jpg'}\n")
    out = tmp_path / "ray"
    r = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(manifest), str(out)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.split("REPORT", 1)[1])
    assert report["parts_after_stop"] == ["part-00000"]
    assert "pass --resume" in report["without_resume"]
    assert "precision" in report["other_precision"]
    assert report["written"] == [0, "stopped", 1, 2]  # part 0 was not classified again
    assert "--resume to continue" in r.stderr
    rows = pq.read_table(out).to_pylist()
    assert sorted(row["source"] for row in rows) == sorted(str(p) for p in files)
    assert report["images"] == 10 and not report["partial_left"]
    record = json.loads((out / "_run.json").read_text())
    assert [s["source"] for s in record["skipped"]] == [str(tmp_path / "gone.jpg")]


def test_the_lists_are_read_for_their_path_and_label_only_and_bad_ones_are_named(tmp_path):
    import pyarrow as pa

    from bloodcell.core.errors import DataError
    from bloodcell.prediction.ray_engine import _listing

    (tmp_path / "a.csv").write_text("id,path,label,notes\n1,x.jpg,neutrophil,n\n2,y.jpg,monocyte,\n")
    pq.write_table(pa.table({"path": ["z.jpg"], "label": ["basophil"], "extra": [b"x" * 100]}), tmp_path / "b.parquet")
    listing = _listing([tmp_path / "a.csv", tmp_path / "b.parquet"])
    assert list(listing.columns) == ["path", "label", "_manifest"]
    assert listing.values.tolist() == [["x.jpg", "neutrophil", "0"], ["y.jpg", "monocyte", "0"], ["z.jpg", "basophil", "1"]]
    (tmp_path / "c.csv").write_text("file,label\nx.jpg,a\n")
    (tmp_path / "d.parquet").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"c\.csv: no 'path' column \(columns: file, label\)"):
        _listing([tmp_path / "c.csv"])
    with pytest.raises(DataError, match=r"d\.parquet: cannot be read as a manifest"):
        _listing([tmp_path / "d.parquet"])
