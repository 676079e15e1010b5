"""Decoding work runs on threads: safe inside a process that already runs PyTorch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from bloodcell.data.workers import for_each_result

SRC = str(Path(__file__).resolve().parents[1] / "src")

#: Loads and runs a PyTorch model (so its worker threads exist and stay busy in the
#: background), then builds the cache and the audit facts eight times with two
#: workers. Counts every fork on the way: the cache build used to fork a process
#: pool here, and a forked child could block for ever on a lock a PyTorch thread held.
_AFTER_TORCH = textwrap.dedent("""
    import os, sys, threading
    forks = []
    os.register_at_fork(before=lambda: forks.append(1))
    import torch
    from bloodcell.core.preprocess import PreprocessConfig
    from bloodcell.data import load_arrays, open_dataset, pixels
    from bloodcell.data.audit.checks import audit_dataset
    from bloodcell.data.audit import facts

    torch.set_num_threads(2)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 8)).eval()
    stop = threading.Event()

    def keep_running():
        with torch.no_grad():
            while not stop.is_set():
                model(torch.rand(16, 3, 32, 32))
                stop.wait(0.002)

    runner = threading.Thread(target=keep_running, daemon=True)
    runner.start()
    pixels.CHUNK = facts.CHUNK = 2
    root, out = sys.argv[1], sys.argv[2]
    for rep in range(int(sys.argv[3])):
        os.environ["BLOODCELL_CACHE"] = os.path.join(out, f"cache{rep}")
        arrays = load_arrays(root, PreprocessConfig(image_size=16), workers=2, progress=False)
        audit_dataset(open_dataset(root), workers=2, progress=False)
        assert len(arrays) == 24, len(arrays)
    stop.set()
    runner.join()
    print("forks", len(forks))
""")


def test_cache_build_after_torch_threads_never_forks_nor_hangs(make_folder_dataset, tmp_path):
    pytest.importorskip("torch")
    root = make_folder_dataset(per_class=3, size=32)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "2"}
    try:
        proc = subprocess.run([sys.executable, "-c", _AFTER_TORCH, str(root), str(tmp_path), "8"],
                              capture_output=True, text=True, env=env, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("building the cache after PyTorch started its threads hung (timeout 240 s)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["forks", "0"]


def test_for_each_result_consumes_every_result_once():
    seen = []
    for_each_result(lambda x: x * x, range(50), 3, seen.append)
    assert sorted(seen) == [x * x for x in range(50)]


def test_for_each_result_stops_early_and_shuts_down_on_error():
    started = []
    lock = threading.Lock()

    def work(x):
        with lock:
            started.append(x)
        if x == 3:
            raise OSError("disk gone")
        return x

    with pytest.raises(OSError, match="disk gone"):
        for_each_result(work, range(1000), 2, lambda r: None)
    assert len(started) < 20
    assert not [t for t in threading.enumerate() if t.name.startswith("bloodcell-decode")]
