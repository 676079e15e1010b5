"""bloodcell predict --engine ray: a local Ray instance with two model actors gives the rows of the local path.

The comparison uses 1,000 real PBC cells (125 of each class); ``benchmarks/predict_scale.py``
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

    files = [p for name in CLASSES for p in sorted((real_data / name).glob("[!.]*.jpg"))[:125]]
    assert len(files) == 1000
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
