"""Does channels-last and bf16 autocast speed up training on this CPU?

Times full training steps (forward, backward, Adam update) of the custom CNNs
and EfficientNet-Lite0 at 64 and 128 px in the four combinations of memory
format and precision, and prints milliseconds per image (median of several
timed steps). The "auto" choices of ``bloodcell train`` (see
``bloodcell/train/runtime.py``) follow these figures.

    python benchmarks/cpu_formats.py [--threads 2] [--steps 5] [--batch 32]

Writes ``benchmarks/results/cpu_formats.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from bloodcell.networks import create_model
from bloodcell.training.device import cpu_has_native_bf16, has_grouped_convs


def step_ms_per_image(name: str, size: int, channels_last: bool, bf16: bool, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = create_model(name, num_classes=8).train()
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 8, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up: oneDNN primitive creation
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--models", nargs="+", default=["basic_cnn", "enhanced_cnn", "efficientnet_lite0"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--out", default="benchmarks/results/cpu_formats.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"threads={args.threads} batch={args.batch} native bf16={cpu_has_native_bf16()} "
          f"cpu={platform.processor() or platform.machine()} load={__import__('os').getloadavg()[0]:.1f}")
    print(f"{'model':<20}{'px':>5}  {'fp32':>8}  {'fp32+CL':>8}  {'bf16':>8}  {'bf16+CL':>8}   ms/image, train step")
    for name in args.models:
        for size in args.sizes:
            cells = {}
            for cl in (False, True):
                for bf16 in (False, True):
                    cells[(cl, bf16)] = step_ms_per_image(name, size, cl, bf16, args.batch, args.steps)
            best = min(cells, key=cells.get)
            grouped = has_grouped_convs(create_model(name, num_classes=8))
            print(f"{name:<20}{size:>5}  {cells[(False, False)]:>8.2f}  {cells[(True, False)]:>8.2f}  "
                  f"{cells[(False, True)]:>8.2f}  {cells[(True, True)]:>8.2f}   fastest: "
                  f"{'bf16' if best[1] else 'fp32'}{'+CL' if best[0] else ''}")
            rows.append({"model": name, "size": size, "grouped_convs": grouped,
                         **{f"{'bf16' if b else 'fp32'}{'_cl' if c else ''}_ms_per_image": round(v, 3)
                            for (c, b), v in cells.items()}})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "batch": args.batch, "torch": torch.__version__,
                               "native_bf16": cpu_has_native_bf16(), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
