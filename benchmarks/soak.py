"""Hostile-load soak test of `bloodcell serve` on the loopback interface.

    python benchmarks/soak.py                 # 3 minutes against the default model
    python benchmarks/soak.py --seconds 60 --model runs/lite0

Starts `bloodcell serve` on a free 127.0.0.1 port, warms it up with one request
of every kind (Grad-CAM included, which loads PyTorch once), then runs
``--clients`` threads for ``--seconds`` (at most ``--max-requests`` requests)
mixing good cells (real PBC images from ``$BLOODCELL_DATA`` when present),
broken files, uploads over the size limit, images of 49 megapixels, a large
JPEG photo, many-file requests and Grad-CAM requests, while another thread
polls ``/health`` and the server's RSS (``/proc/PID/status``). Reports counts
per kind and status, 5xx other than the deliberate 503 back-pressure, health
failures, peak RSS and RSS after the run against the warm level, and the
p50/p99 latency of the good single-image requests during the storm. Writes
``benchmarks/results/soak.json``; exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from load import free_port, start_server  # benchmarks/ is on the path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
RSS_GOAL_MB = 1500
END_GOAL = 1.20
#: Request kinds and their share of the storm.
MIX = {"good": 40, "good_many": 8, "too_many_files": 4, "broken": 10, "truncated": 6, "huge_pixels": 8,
       "big_jpeg": 6, "oversized": 3, "gradcam": 15}


def _encode(image: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **kw)
    return buf.getvalue()


def good_cells(n: int = 64) -> list[tuple[str, bytes]]:
    """Real PBC cells when the dataset is there, else synthetic 360 px JPEGs."""
    root = Path(os.environ.get("BLOODCELL_DATA", ROOT.parent / "shared" / "data" / "pbc"))
    files = sorted(root.glob("*/*.jpg"))
    if len(files) >= n:
        pick = np.random.default_rng(0).choice(len(files), n, replace=False)
        return [(files[i].name, files[i].read_bytes()) for i in sorted(pick)]
    rng = np.random.default_rng(0)
    return [(f"cell{i}.jpg", _encode(rng.integers(0, 256, (360, 360, 3), dtype=np.uint8), "JPEG")) for i in range(n)]


def hostile_payloads(cells: list[tuple[str, bytes]]) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    huge = _encode(np.zeros((7000, 7000, 3), np.uint8), "PNG", compress_level=9)
    photo = np.kron(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), np.ones((10, 10, 1), np.uint8))
    return {
        "broken": rng.bytes(20_000),
        "truncated": cells[0][1][: len(cells[0][1]) // 3],
        "huge_pixels": huge,  # 49 MP in about 150 kB
        "big_jpeg": _encode(photo, "JPEG", quality=85),  # 3000x4000, decoded at reduced scale
        "oversized": rng.bytes(34_000_000),  # over the 32 MB upload limit
    }


def request_for(kind: str, rng: random.Random, cells, hostile) -> tuple[str, list]:
    one = [cells[rng.randrange(len(cells))]]
    if kind == "good":
        return "/v1/predict", one
    if kind == "good_many":
        return "/v1/predict", rng.sample(cells, 48)
    if kind == "too_many_files":
        return "/v1/predict", [cells[i % len(cells)] for i in range(rng.choice([65, 200, 1001]))]
    if kind == "gradcam":
        return "/v1/predict?explain=true", rng.sample(cells, rng.choice([1, 4]))
    return "/v1/predict", [(f"{kind}.bin", hostile[kind]), *(one if kind != "oversized" else [])]


class Monitor(threading.Thread):
    """Polls /health and the server's RSS until stopped."""

    def __init__(self, url: str, pid: int):
        super().__init__(daemon=True)
        self.url, self.pid = url, pid
        self.peak_mb = 0.0
        self.polls = self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import httpx

        while not self.stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
            try:
                ok = httpx.get(self.url + "/health", timeout=10).status_code == 200
            except httpx.HTTPError:
                ok = False
            self.polls += 1
            self.failures += not ok
            self.stop.wait(0.5)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def client_loop(url, seed, deadline, budget, cells, hostile, results, lock) -> None:
    import httpx

    rng = random.Random(seed)
    kinds, weights = list(MIX), list(MIX.values())
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < deadline:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            kind = rng.choices(kinds, weights)[0]
            path, files = request_for(kind, rng, cells, hostile)
            t0 = time.perf_counter()
            try:
                status = str(client.post(url + path, files=[("files", f) for f in files]).status_code)
            except httpx.HTTPError as e:
                status = type(e).__name__
            with lock:
                results.append((kind, status, time.perf_counter() - t0))


def warm_up(url: str, cells, hostile) -> None:
    import httpx

    with httpx.Client(timeout=300) as client:
        for kind in MIX:
            if kind != "oversized":
                path, files = request_for(kind, random.Random(0), cells, hostile)
                client.post(url + path, files=[("files", f) for f in files])
    time.sleep(2)


def storm(url: str, pid: int, args, cells, hostile) -> dict:
    results: list = []
    lock = threading.Lock()
    budget = [args.max_requests]
    monitor = Monitor(url, pid)
    monitor.start()
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    threads = [threading.Thread(target=client_loop, args=(url, i, deadline, budget, cells, hostile, results, lock))
               for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    time.sleep(3)
    monitor.stop.set()
    monitor.join()
    return {"results": results, "wall": wall, "monitor": monitor}


def summarize(run: dict, warm_mb: float, idle_mb: float, end_mb: float) -> dict:
    results, monitor = run["results"], run["monitor"]
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for kind, status, _ in results:
        by_kind[kind][status] += 1
    statuses = Counter(status for _, status, _ in results)
    good = np.asarray([s for kind, status, s in results if kind == "good" and status == "200"]) * 1000
    server_errors = sum(n for s, n in statuses.items() if s.startswith("5") and s != "503")
    return {
        "requests": len(results), "seconds": round(run["wall"], 1),
        "status_counts": dict(sorted(statuses.items())), "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "server_errors_5xx": server_errors, "backpressure_503": statuses.get("503", 0),
        "health_polls": monitor.polls, "health_failures": monitor.failures,
        "rss_mb": {"idle": round(idle_mb), "warm": round(warm_mb), "peak": round(max(monitor.peak_mb, warm_mb)),
                   "end": round(end_mb), "end_over_warm": round(end_mb / warm_mb, 3)},
        "good_single_latency_ms": {"n": int(len(good)),
                                   "p50": round(float(np.percentile(good, 50)), 1) if len(good) else None,
                                   "p99": round(float(np.percentile(good, 99)), 1) if len(good) else None},
    }


def report(summary: dict, out: Path) -> bool:
    rss, lat = summary["rss_mb"], summary["good_single_latency_ms"]
    print(f"{summary['requests']} requests in {summary['seconds']} s; status counts {summary['status_counts']}")
    for kind, counts in summary["by_kind"].items():
        print(f"  {kind:15s} {counts}")
    print(f"5xx other than 503: {summary['server_errors_5xx']}; deliberate 503 back-pressure: "
          f"{summary['backpressure_503']}; /health failures {summary['health_failures']}/{summary['health_polls']}")
    print(f"RSS MB: idle {rss['idle']}, warm {rss['warm']}, peak {rss['peak']}, end {rss['end']} "
          f"(end/warm {rss['end_over_warm']}); goals: peak < {RSS_GOAL_MB}, end/warm <= {END_GOAL}")
    print(f"good single-image requests during the storm: n={lat['n']} p50 {lat['p50']} ms, p99 {lat['p99']} ms")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    return (summary["server_errors_5xx"] == 0 and summary["health_failures"] == 0
            and rss["peak"] < RSS_GOAL_MB and rss["end_over_warm"] <= END_GOAL)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model to serve (default: the bundled model)")
    ap.add_argument("--seconds", type=float, default=180.0, help="length of the storm (default: 180)")
    ap.add_argument("--clients", type=int, default=16, help="client threads (default: 16)")
    ap.add_argument("--max-requests", type=int, default=20_000, help="stop after this many requests")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    args = ap.parse_args(argv)
    cells = good_cells()
    hostile = hostile_payloads(cells)
    port = free_port()
    proc = start_server(args.model, port)
    url = f"http://127.0.0.1:{port}"
    try:
        idle_mb = rss_mb(proc.pid)
        warm_up(url, cells, hostile)
        warm_mb = rss_mb(proc.pid)
        print(f"server pid {proc.pid} on {url}: RSS {idle_mb:.0f} MB idle, {warm_mb:.0f} MB warm; "
              f"{args.clients} clients for {args.seconds:g} s", flush=True)
        run = storm(url, proc.pid, args, cells, hostile)
        end_mb = rss_mb(proc.pid)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    summary = summarize(run, warm_mb, idle_mb, end_mb)
    summary.update(server_alive_at_end=alive, clients=args.clients, load_average=os.getloadavg(),
                   time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return 0 if report(summary, Path(args.out)) and alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
