"""Distributed training: two CPU processes with gloo; only rank 0 writes files."""

from __future__ import annotations

import json
import socket

import torch.multiprocessing as mp

from _train_helpers import ddp_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_train_and_only_rank0_writes(tmp_path):
    overrides = {"epochs": 2, "augment": {"hflip": True}}
    mp.spawn(ddp_worker, args=(2, _free_port(), str(tmp_path), overrides), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "results" / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "results" / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert len(r0["history"]) == 2
    # Metrics are all-reduced, so both processes agree on every number (and on early stopping).
    assert r0["history"] == r1["history"]
    run = tmp_path / "rank0"
    assert (run / "model.json").is_file() and (run / "checkpoint" / "LATEST.json").is_file()
    assert not (tmp_path / "rank1").exists(), "rank 1 wrote files"
    meta = json.loads((run / "model.json").read_text())
    assert meta["training"]["world_size"] == 2
    # Each process saw half of the 72 training images per epoch; the model learnt the easy classes.
    assert meta["history"][-1]["val_acc"] > 0.6
