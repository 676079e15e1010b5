"""The lab review workflow end to end, in process: open a case, upload a 100-cell (or ``--cells``)
differential in requests of ``--batch`` real PBC images, review every cell, read the case, export it.

    python benchmarks/cases.py                       # default model, 100 cells in requests of 20
    python benchmarks/cases.py --cells 200 --model runs/lite0

Prints the time of each step and writes ``benchmarks/results/cases.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

from load import payloads  # noqa: E402


def _timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def run(model: str | None, cells: int, batch: int) -> dict:
    from fastapi.testclient import TestClient

    from bloodcell.server import create_app

    images = payloads(cells)
    figures: dict = {"cells": cells, "batch": batch}
    with tempfile.TemporaryDirectory() as folder, \
            TestClient(create_app(model, cases_dir=folder, allowed_hosts=["testserver"])) as client:
        case = client.post("/v1/cases", json={"accession": "bench", "target": cells}).json()
        url = f"/v1/cases/{case['id']}"
        uploads = []
        for start in range(0, cells, batch):
            part = [("files", (n, d, "image/jpeg")) for n, d in images[start:start + batch]]
            r, dt = _timed(client.post, url + "/cells", files=part)
            assert r.status_code == 200, r.text
            uploads.append(dt)
        ids = [c["id"] for c in client.get(url + "/cells").json()["cells"]]
        reviews = []
        for i, cell in enumerate(ids):
            r, dt = _timed(client.patch, f"{url}/cells/{cell}", json={"label": "neutrophil" if i % 3 else "smudge",
                                                                       "reviewer": "bench"})
            reviews.append(dt)
        figures["upload_s_per_request"] = round(sum(uploads) / len(uploads), 3)
        figures["upload_ms_per_image"] = round(1000 * sum(uploads) / cells, 1)
        figures["review_ms_median"] = round(1000 * sorted(reviews)[len(reviews) // 2], 1)
        figures["review_ms_max"] = round(1000 * max(reviews), 1)
        for name, path in (("case", ""), ("csv", "/export.csv"), ("json", "/export.json"), ("report", "/report"),
                           ("dataset_zip", "/dataset.zip"), ("gradcam_first", f"/cells/{ids[0]}/gradcam"),
                           ("gradcam", f"/cells/{ids[1]}/gradcam")):
            r, dt = _timed(client.get, url + path)
            assert r.status_code == 200, r.text
            figures[f"{name}_ms"] = round(1000 * dt, 1)
        figures["store_mb"] = round(sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6, 2)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or .onnx (default: the bundled model)")
    parser.add_argument("--cells", type=int, default=100, help="cells in the case (default 100)")
    parser.add_argument("--batch", type=int, default=20, help="images per upload request (default 20)")
    args = parser.parse_args()
    figures = run(args.model, args.cells, args.batch)
    for key, value in figures.items():
        print(f"{key:<24} {value}")
    out = ROOT / "benchmarks" / "results" / "cases.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
