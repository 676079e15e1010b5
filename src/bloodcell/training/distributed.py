"""Multi-process training with PyTorch DDP, started by ``torchrun``.

``torchrun --nproc_per_node=N -m bloodcell train ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; :func:`setup`
joins the process group (NCCL when training on CUDA, Gloo on CPU). Every
process trains on its own share of each epoch's shuffled batches; only rank 0
writes checkpoints, the model folder, logs and plots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def current() -> DistInfo:
    """This process's place in the process group (a single process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        return DistInfo(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                        int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    return DistInfo()


def setup(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return current()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    return current()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
