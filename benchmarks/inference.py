"""Inference speed of a model: PyTorch eager vs onnxruntime (float32, int8) at batch 1 and 64.

    python benchmarks/inference.py                       # the default model
    python benchmarks/inference.py --model runs/lite0    # any model folder

Every engine gets the same prepared images (real PBC cells when the dataset
is present, else synthetic ones) and the same number of threads (default: the
usable CPUs). The int8 variants are exported to a temporary folder: static
QDQ (calibrated on 64 of the images) and dynamic (linear layers only); their
argmax agreement with float32 is reported. For an ensemble, one member alone
is measured too (``onnxruntime-fp32-one-member``), so the ensemble's cost
shows as a ratio. Figures are images per second,
measured for ``--seconds`` per engine and batch size after a warm-up; on a
shared machine they are noisy, so compare ratios from one run.
Results go to ``benchmarks/results/inference.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def images_for(preprocess, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    from bloodcell.core.preprocess import load_prepared
    from bloodcell.core.settings import data_root

    root = data_root() or Path("../shared/data/pbc")
    if not root.is_absolute():
        root = ROOT / root
    files = sorted(root.glob("*/*.jpg"))
    if len(files) >= n:
        pick = np.random.default_rng(seed).choice(len(files), n, replace=False)
        return np.stack([load_prepared(files[i], preprocess) for i in sorted(pick)]), f"PBC ({root})"
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, preprocess.image_size, preprocess.image_size, 3), dtype=np.uint8), "random pixels"


def rate(fn, x: np.ndarray, batch: int, seconds: float) -> float:
    """Images per second of ``fn`` on consecutive batches of ``x``."""
    starts = list(range(0, len(x) - batch + 1, batch)) or [0]
    fn(x[:batch])
    done, i, t0 = 0, 0, time.perf_counter()
    while True:
        s = starts[i % len(starts)]
        fn(x[s : s + batch])
        done += batch
        i += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and i >= 3:
            return done / elapsed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model or $BLOODCELL_MODEL)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--seconds", type=float, default=6.0, help="measuring time per engine and batch size")
    ap.add_argument("--threads", type=int, default=None, help="threads for every engine (default: usable CPUs)")
    ap.add_argument("--images", type=int, default=256, help="distinct images cycled through")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inference.json"))
    args = ap.parse_args(argv)

    import torch

    from bloodcell.core.model_choice import resolve_model
    from bloodcell.core.model_folder import ONNX
    from bloodcell.core.preprocess import normalize
    from bloodcell.networks import load_model
    from bloodcell.packaging.onnx import export_onnx
    from bloodcell.prediction.onnx_backend import OnnxModel, default_threads

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    folder = resolve_model(args.model)
    loaded = load_model(folder, "cpu")
    x, source = images_for(loaded.preprocess, args.images)
    print(f"model {folder} ({loaded.meta.get('architecture')}, {loaded.preprocess.image_size} px), "
          f"{threads} thread(s), images: {source}", flush=True)

    def eager(batch):
        with torch.inference_mode():
            return loaded.module(normalize(torch.from_numpy(np.ascontiguousarray(batch)), loaded.preprocess))

    engines = {"pytorch-eager": eager}
    agreement = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = folder / ONNX if (folder / ONNX).is_file() else export_onnx(folder, Path(tmp) / "fp32.onnx")
        sessions = {"onnxruntime-fp32": OnnxModel(fp32, threads)}
        static = export_onnx(folder, Path(tmp) / "static.onnx", quantize="static", calibration=x[:64])
        sessions["onnxruntime-int8-static"] = OnnxModel(static, threads)
        dynamic = export_onnx(folder, Path(tmp) / "dynamic.onnx", quantize="dynamic")
        sessions["onnxruntime-int8-dynamic"] = OnnxModel(dynamic, threads)
        members = (loaded.meta.get("ensemble") or {}).get("members") or []
        if members:
            one = export_onnx(folder / members[0], Path(tmp) / "member.onnx")
            sessions["onnxruntime-fp32-one-member"] = OnnxModel(one, threads)
        ref = sessions["onnxruntime-fp32"].run(x)[0].argmax(1)
        eager_ref = np.concatenate([eager(x[i : i + 64]).numpy() for i in range(0, len(x), 64)]).argmax(1)
        agreement["onnxruntime-fp32"] = float((ref == eager_ref).mean())
        for name, sess in sessions.items():
            engines[name] = lambda b, s=sess: s.session.run(None, {s.input_name: normalize(b, s.preprocess)})
            if name not in ("onnxruntime-fp32", "onnxruntime-fp32-one-member"):
                agreement[name] = float((sess.run(x)[0].argmax(1) == ref).mean())
        results = {}
        for batch in args.batch_sizes:
            for name, fn in engines.items():
                r = rate(fn, x, batch, args.seconds)
                results.setdefault(name, {})[f"batch_{batch}"] = round(r, 1)
                print(f"  {name:<26} batch {batch:>3}: {r:8.1f} images/s", flush=True)
    big = max(args.batch_sizes)
    eager_big = results["pytorch-eager"][f"batch_{big}"]
    ratios = {name: round(v[f"batch_{big}"] / eager_big, 2) for name, v in results.items()}
    print(f"speed-up over eager at batch {big}: " + ", ".join(f"{k} {v}x" for k, v in ratios.items()))
    print("argmax agreement: " + ", ".join(f"{k} {v:.4f}" for k, v in agreement.items()) + " (fp32 vs eager; int8 vs fp32)")
    doc = {
        "model": str(folder), "architecture": loaded.meta.get("architecture"), "image_size": loaded.preprocess.image_size,
        "threads": threads, "images": source, "seconds_per_measure": args.seconds, "images_per_second": results,
        f"speedup_vs_eager_batch_{big}": ratios, "argmax_agreement": agreement,
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
