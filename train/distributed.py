"""torchrun / DistributedDataParallel plumbing: NCCL on GPUs, gloo on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def info_from_env() -> DistInfo:
    """Where this process sits in the torchrun group (one process when torchrun is absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(info: DistInfo) -> torch.device:
    """This rank's GPU (its LOCAL_RANK) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        # Set before the process group exists: NCCL binds each rank to the current device.
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def join_group(info: DistInfo, device: torch.device) -> None:
    """Join the process group with the backend that fits `device`: NCCL on CUDA, gloo on CPU."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world)


def init_from_env(device: torch.device | None = None) -> tuple[DistInfo, torch.device]:
    """Read torchrun's environment, choose this rank's device, then join the group.

    The device is chosen first because it decides the backend; pass `device` only to pin
    a rank to it (the CPU tests do, so that they run gloo on a machine with GPUs too).
    """
    info = info_from_env()
    if device is None:
        device = pick_device(info)
    join_group(info, device)
    return info, device


def shard(indices: list[int], info: DistInfo) -> list[int]:
    """This rank's share of one global batch (every rank's share differs by at most one)."""
    return indices[info.rank :: info.world]


def all_reduce_sum(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on one (a stop request must stop all ranks together)."""
    return all_reduce_sum(1.0 if flag else 0.0, info, device) > 0


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
