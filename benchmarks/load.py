"""Load test of `bloodcell serve` on the loopback interface.

    bloodcell serve &                                   # in one shell (default model)
    python benchmarks/load.py --url http://127.0.0.1:8000
    python benchmarks/load.py --start --model runs/lite0   # starts and stops a server itself

Sends ``--requests`` POST /v1/predict requests (one image each, real PBC cells
when the dataset is present, else synthetic) from ``--concurrency`` clients
(httpx.AsyncClient) and reports errors, latency percentiles and throughput.
Only loopback addresses are accepted; the run stops after ``--max-seconds``.
Results go to ``benchmarks/results/load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def payloads(n: int = 32) -> list[tuple[str, bytes]]:
    sys.path.insert(0, str(ROOT / "src"))
    from bloodcell.core.settings import data_root

    root = data_root() or Path("../shared/data/pbc")
    if not root.is_absolute():
        root = ROOT / root
    files = sorted(root.glob("*/*.jpg"))
    if len(files) >= n:
        pick = np.random.default_rng(0).choice(len(files), n, replace=False)
        return [(files[i].name, files[i].read_bytes()) for i in sorted(pick)]
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (360, 360, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append((f"img{i}.jpg", buf.getvalue()))
    return out


async def run_load(url: str, images, requests: int, concurrency: int, max_seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(requests))
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client):
        for i in counter:
            if time.monotonic() > deadline:
                errors["stopped_at_time_limit"] = errors.get("stopped_at_time_limit", 0) + 1
                return
            name, data = images[i % len(images)]
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/predict", files={"files": (name, data, "image/jpeg")})
                if r.status_code != 200:
                    key = f"HTTP {r.status_code}"
                    errors[key] = errors.get(key, 0) + 1
                    continue
            except httpx.HTTPError as e:
                key = type(e).__name__
                errors[key] = errors.get(key, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {
        "requests": requests, "concurrency": concurrency, "completed": int(len(lat)),
        "errors": int(sum(errors.values())), "error_kinds": errors, "seconds": round(wall, 2),
        "throughput_rps": round(len(lat) / wall, 1) if wall else None,
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p90": round(float(np.percentile(lat, 90)), 1),
                       "p99": round(float(np.percentile(lat, 99)), 1), "max": round(float(lat.max()), 1)} if len(lat) else None,
    }


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, port: int) -> subprocess.Popen:
    """Start `bloodcell serve` on 127.0.0.1:PORT and wait (at most 2 minutes) until /health answers."""
    import httpx

    cmd = [sys.executable, "-m", "bloodcell", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if model:
        cmd += ["--model", model]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("bloodcell serve did not start")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="a running server on loopback, e.g. http://127.0.0.1:8000")
    ap.add_argument("--start", action="store_true", help="start `bloodcell serve` on a free loopback port and stop it after")
    ap.add_argument("--model", default=None, help="with --start: model to serve (default: the bundled model)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=600.0, help="stop sending after this long")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load.json"))
    args = ap.parse_args(argv)
    if not args.url and not args.start:
        ap.error("give --url of a running server or --start")
    proc = None
    if args.start:
        port = free_port()
        proc = start_server(args.model, port)
        url = f"http://127.0.0.1:{port}"
    else:
        url = args.url.rstrip("/")
        host = urlparse(url).hostname
        if host not in LOOPBACK:
            ap.error(f"only loopback servers are load-tested; got host {host!r}")
    try:
        import httpx

        info = httpx.get(url + "/health", timeout=10).json()
        images = payloads()
        print(f"{args.requests} requests, {args.concurrency} concurrent clients -> {url} (model {info.get('model')}, "
              f"{info.get('backend')}); images of {np.mean([len(d) for _, d in images]) / 1e3:.0f} kB", flush=True)
        result = asyncio.run(run_load(url, images, args.requests, args.concurrency, args.max_seconds))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    result.update(url=url, model=info.get("model"), backend=info.get("backend"), load_average=os.getloadavg(),
                  time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    lat = result["latency_ms"] or {}
    print(f"completed {result['completed']}/{args.requests}, errors {result['errors']} {result['error_kinds'] or ''}")
    print(f"latency p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms; throughput {result['throughput_rps']} requests/s "
          f"over {result['seconds']} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
