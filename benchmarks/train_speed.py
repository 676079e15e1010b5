"""Training speed and peak memory of every registered model on this machine.

For each model, input size (default 64, 128 and 224 px), precision (fp32, or
bf16 autocast) and memory format (contiguous NCHW, or channels_last), one
training step is forward + cross-entropy + backward + Adam step on a random
batch (default 16 images, the default batch of ``bloodcell train``). Data loading and augmentation are not included:
the figures are the model's cost alone. Each configuration runs in its own
subprocess, so its peak resident memory (``ru_maxrss`` read by the child
itself) belongs to that configuration only, and one configuration that runs
out of memory or time cannot spoil the others.

Timing: ``--warmup`` untimed steps (default 1: it pays for kernel selection
and allocator growth), then up to ``--steps`` timed steps (default 3), cut
short once a configuration has spent ``--max-seconds`` (default 8) timing and
has at least one timed step. Images/s is the batch over the median timed
step (wall clock). The JSON also holds the mean-based rate and
``images_per_cpu_s``, the rate per CPU-second of the process scaled to all its
threads: on a busy machine it is closer to what an idle machine would give.

Run time: the default grid is 9 models x 3 sizes x 2 precisions x 2 memory
formats = 108 subprocesses, each with the fewest steps that give a figure
(one warm-up, then up to 3 timed steps but only one once 8 s are spent), since
the large models at 224 px take several seconds per step even on an idle
machine. Estimated from the CPU time a ``--batch 32`` run used, the default
run takes about 15 minutes on an idle 2-core machine (some 7 of them starting
the 108 processes); the ``--batch 32`` run itself needed about 24 CPU-minutes
per core and, on a machine shared with other work (load average 6-7 on 2
cores), 77 minutes of wall time. Narrow the grid for a quicker answer
(``--models``, ``--sizes``, ``--dtypes``, ``--formats``); ``--quick`` (2 small
models at 64 px, 2 timed steps) takes 1-2 minutes. On a shared machine the
figures are noisy: compare ratios measured in one run (channels_last against
contiguous, bf16 against fp32) rather than absolute figures across runs, and
prefer ``--repeat``.

``--repeat N`` runs the whole grid N times, one pass after another, and
reports each configuration's median: slow drifts in the machine's load then
hit every variant alike, which steadies the ratios.

Writes ``benchmarks/results/train_speed.json`` (rewritten after every
configuration; ``--resume`` keeps finished configurations of an interrupted
run) and prints a Markdown table.

Examples
--------
    python benchmarks/train_speed.py
    python benchmarks/train_speed.py --models basic_cnn efficientnet_lite0 --sizes 128 --steps 5
    python benchmarks/train_speed.py --quick
    python benchmarks/train_speed.py --models enhanced_cnn efficientnet_lite0 --sizes 64 128 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
RESULTS = REPO / "benchmarks" / "results" / "train_speed.json"
DTYPES = ("fp32", "bf16")
FORMATS = ("contiguous", "channels_last")
QUICK_MODELS = ("basic_cnn", "efficientnet_lite0")


# --------------------------------------------------------------------------- child


def child(cfg: dict) -> dict:
    """Time one configuration in this process and return its figures."""
    import resource

    import torch
    from torch import nn

    sys.path.insert(0, str(SRC))
    from bloodcell.networks import create_model

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch, size = cfg["batch"], cfg["size"]
    fmt = torch.channels_last if cfg["format"] == "channels_last" else torch.contiguous_format
    model = create_model(cfg["model"], num_classes=8).train().to(memory_format=fmt)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 8, (batch,))
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg["dtype"] == "bf16"):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()}")
        return time.perf_counter() - start, time.process_time() - cpu

    warm = [step()[0] for _ in range(cfg["warmup"])]
    times: list[float] = []
    cpu_times: list[float] = []
    while len(times) < cfg["steps"] and (not times or sum(times) < cfg["max_seconds"]):
        wall, cpu = step()
        times.append(wall)
        cpu_times.append(cpu)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    median = statistics.median(times)
    return {
        **cfg,
        "status": "ok",
        "params_m": round(params / 1e6, 2),
        "threads": threads,
        "timed_steps": len(times),
        "warmup_seconds": round(sum(warm), 3),
        "step_seconds": [round(t, 4) for t in times],
        "step_cpu_seconds": [round(t, 4) for t in cpu_times],
        "images_per_s": round(batch / median, 2),
        "images_per_s_mean": round(batch * len(times) / sum(times), 2),
        "images_per_cpu_s": round(batch * len(times) / (sum(cpu_times) / threads), 2),
        "base_rss_mib": round(base_kib / 1024, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }


# -------------------------------------------------------------------------- parent


def key(row: dict) -> tuple:
    return (row["model"], row["size"], row["dtype"], row["format"], row["batch"])


def run_config(cfg: dict, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    import resource

    start = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(cfg)],
            capture_output=True, text=True, env=env, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {**cfg, "status": f"timeout after {timeout:.0f} s"}
    wall = round(time.perf_counter() - start, 1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = round(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime, 1)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**cfg, "status": f"failed: {tail[:200]}", "wall_seconds": wall, "process_cpu_seconds": cpu}
    return {**json.loads(lines[-1]), "wall_seconds": wall, "process_cpu_seconds": cpu}


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
        isa = sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    except (OSError, StopIteration):
        isa = []
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "isa": isa,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()),
    }


def aggregate(runs: list[dict]) -> dict:
    """One configuration's figures over its repeats: median rates, largest peak memory."""
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return runs[-1]
    row = {k: v for k, v in ok[0].items() if k not in ("step_seconds", "step_cpu_seconds", "repeat", "wall_seconds")}
    for k in ("images_per_s", "images_per_s_mean", "images_per_cpu_s"):
        row[k] = round(statistics.median(r[k] for r in ok), 2)
    row["images_per_s_runs"] = [r["images_per_s"] for r in ok]
    row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in ok)
    row["base_rss_mib"] = max(r["base_rss_mib"] for r in ok)
    row["repeats"] = len(ok)
    return row


def fmt_rate(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{row['images_per_s']:.1f}" if row.get("status") == "ok" else row["status"].split(":")[0]


def ratio(a: dict | None, b: dict | None) -> str:
    if not a or not b or a.get("status") != "ok" or b.get("status") != "ok":
        return "-"
    return f"{a['images_per_s'] / b['images_per_s']:.2f}"


def table(rows: list[dict]) -> str:
    """Markdown: one line per model and size; images/s per precision and format, ratios, peak memory."""
    by = {(r["model"], r["size"], r["dtype"], r["format"]): r for r in rows}
    pairs = sorted({(r["model"], r["size"]) for r in rows}, key=lambda p: (p[0], p[1]))
    out = [
        "| model | px | fp32 img/s | fp32 CL img/s | bf16 img/s | bf16 CL img/s | CL/contig fp32 | CL/contig bf16 "
        "| bf16/fp32 (best) | peak MiB fp32 | peak MiB bf16 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, size in pairs:
        g = {(d, f): by.get((model, size, d, f)) for d in DTYPES for f in FORMATS}

        def best(dtype, g=g):
            ok = [r for r in (g[(dtype, f)] for f in FORMATS) if r and r.get("status") == "ok"]
            return max(ok, key=lambda r: r["images_per_s"]) if ok else None

        def peak(dtype, g=g):
            ok = [r["peak_rss_mib"] for r in (g[(dtype, f)] for f in FORMATS) if r and r.get("status") == "ok"]
            return f"{max(ok):.0f}" if ok else "-"

        out.append(
            f"| {model} | {size} | {fmt_rate(g[('fp32', 'contiguous')])} | {fmt_rate(g[('fp32', 'channels_last')])} "
            f"| {fmt_rate(g[('bf16', 'contiguous')])} | {fmt_rate(g[('bf16', 'channels_last')])} "
            f"| {ratio(g[('fp32', 'channels_last')], g[('fp32', 'contiguous')])} "
            f"| {ratio(g[('bf16', 'channels_last')], g[('bf16', 'contiguous')])} "
            f"| {ratio(best('bf16'), best('fp32'))} | {peak('fp32')} | {peak('bf16')} |"
        )
    return "\n".join(out)


def summary(rows: list[dict]) -> str:
    """Geometric-mean speed-ups over every (model, size) where both sides ran, by wall and by CPU time."""
    import math

    by = {(r["model"], r["size"], r["dtype"], r["format"]): r for r in rows if r.get("status") == "ok"}
    lines = []
    for label, a, b in [
        ("channels_last / contiguous, fp32", ("fp32", "channels_last"), ("fp32", "contiguous")),
        ("channels_last / contiguous, bf16", ("bf16", "channels_last"), ("bf16", "contiguous")),
        ("bf16 / fp32, contiguous", ("bf16", "contiguous"), ("fp32", "contiguous")),
        ("bf16 / fp32, channels_last", ("bf16", "channels_last"), ("fp32", "channels_last")),
    ]:
        parts = []
        for metric, name in (("images_per_s", "wall"), ("images_per_cpu_s", "CPU time")):
            rs = [
                by[(m, s, *a)][metric] / by[(m, s, *b)][metric]
                for (m, s, d, f) in by
                if (d, f) == a and (m, s, *b) in by
            ]
            if rs:
                gm = math.exp(sum(math.log(r) for r in rs) / len(rs))
                wins = sum(r > 1 for r in rs)
                parts.append(f"{name} {gm:.2f}x (range {min(rs):.2f}-{max(rs):.2f}, faster in {wins}/{len(rs)})")
        if parts:
            lines.append(f"- {label}: " + "; ".join(parts))
    base = [r["base_rss_mib"] for r in by.values()]
    if base:
        lines.append(f"- peak MiB is the whole process; before the first step it held {min(base):.0f}-{max(base):.0f} MiB "
                     "(Python, torch, timm, model and batch)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="registry names (default: every registered model)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 224], help="input sizes in px")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--batch", type=int, default=16,
                        help="images per training step (default 16, the training default)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--max-seconds", type=float, default=8.0,
                        help="stop timing a configuration after this long once it has one timed step (default 8)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on one configuration after this long")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the whole grid this many times, interleaved, and report medians (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 small models at 64 px, 2 timed steps")
    parser.add_argument("--resume", action="store_true", help="keep finished configurations from the results file")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON file (default {RESULTS.relative_to(REPO)})")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0

    sys.path.insert(0, str(SRC))
    from bloodcell.networks import list_models

    known = list_models()
    models = args.models or known
    unknown = [m for m in models if m not in known]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(known)}")
    sizes, steps = args.sizes, args.steps
    if args.quick:
        models, sizes, steps = [m for m in models if m in QUICK_MODELS] or list(QUICK_MODELS), [64], min(steps, 2)
    if min(sizes) < 32 or args.batch < 2 or steps < 1 or args.warmup < 0 or args.repeat < 1:
        parser.error("sizes must be >= 32, --batch >= 2, --steps >= 1, --warmup >= 0, --repeat >= 1")

    configs = [
        {"model": m, "size": s, "dtype": d, "format": f, "batch": args.batch, "steps": steps,
         "warmup": args.warmup, "max_seconds": args.max_seconds}
        for m in models for s in sizes for d in args.dtypes for f in args.formats
    ]
    previous = {}
    if args.resume and args.out.is_file():
        previous = {(*key(r), r.get("repeat", 0)): r for r in json.loads(args.out.read_text()).get("runs", [])
                    if r.get("status") == "ok"}
    info = machine()
    runs: list[dict] = []
    started = time.perf_counter()
    total = len(configs) * args.repeat
    for rep in range(args.repeat):
        for i, cfg in enumerate(configs, 1):
            label = f"{cfg['model']} {cfg['size']}px {cfg['dtype']} {cfg['format']}"
            row = previous.get((*key(cfg), rep)) or {**run_config(cfg, args.timeout), "repeat": rep}
            runs.append(row)
            rate = (f"{row['images_per_s']:.1f} img/s, peak {row['peak_rss_mib']:.0f} MiB"
                    if row.get("status") == "ok" else row["status"])
            print(f"[{rep * len(configs) + i}/{total} {time.perf_counter() - started:6.0f} s] {label}: {rate}",
                  file=sys.stderr, flush=True)
            rows = [aggregate([r for r in runs if key(r) == key(c)]) for c in configs if any(key(r) == key(c) for r in runs)]
            args.out.parent.mkdir(parents=True, exist_ok=True)
            doc = {"machine": {**info, "load_average_end": list(os.getloadavg())}, "batch": args.batch,
                   "repeat": args.repeat, "total_seconds": round(time.perf_counter() - started, 1),
                   "total_cpu_seconds": round(sum(r.get("process_cpu_seconds", 0.0) for r in runs), 1),
                   "results": rows, "runs": runs}
            tmp = args.out.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, args.out)

    print(f"Training step (forward + backward + Adam), batch {args.batch}, {info['cpu_count']} threads, "
          f"{info['cpu']}, torch {info['torch']}, median of {args.repeat} run(s). CL = channels_last.\n")
    print(table(rows))
    print()
    print(summary(rows))
    cpu_total = sum(r.get("process_cpu_seconds", 0.0) for r in runs)
    print(f"\nWrote {args.out} ({len(rows)} configurations x {args.repeat}, {time.perf_counter() - started:.0f} s wall, "
          f"{cpu_total:.0f} CPU-seconds in the measuring processes).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
