"""Devices and data parallelism through PyTorch's own engine: run under torchrun, one process per device.

`torchrun --nproc-per-node N -m kdcli distill PROFILE` (or `kdcli distill --nproc N`) sets RANK,
WORLD_SIZE and LOCAL_RANK; kdcli then joins the process group (nccl on CUDA, gloo on CPU), wraps
the student and the learned loss parts in DistributedDataParallel, gives each rank its share of
every step's batches, and lets rank 0 alone write files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kdcli.errors import BadInput


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("train.device is cuda, and no CUDA device is visible", hint="use device: auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def place(world: World, device: torch.device) -> torch.device:
    """Under torchrun on CUDA, each rank owns the GPU of its local rank."""
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def join(device_type: str) -> World:
    """Join the process group torchrun describes; a plain run is a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def mean_terms(world: World, terms: dict[str, float]) -> dict[str, float]:
    """Every rank's loss terms, averaged, so the log shows the global step."""
    if not world.distributed or not terms:
        return terms
    names = sorted(terms)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    values = torch.tensor([terms[n] for n in names], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {n: float(v) / world.size for n, v in zip(names, values)}


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Session:
    """Where a command runs: its device and its place among torchrun's processes."""

    device: torch.device
    world: World

    @property
    def main(self) -> bool:
        return self.world.main


@contextmanager
def session(device_name: str) -> Iterator[Session]:
    """distill, evaluate and pseudo-label all run here: the profile's device (CUDA when present and asked
    for, refused when asked for and absent), one GPU per rank under torchrun, the process group left at the end."""
    device = pick_device(device_name)
    world = join(device.type)
    try:
        yield Session(place(world, device), world)
    finally:
        leave(world)


def shard(world: World, items: list) -> list:
    """This rank's share of a list of batches: every world.size-th one, starting at its rank."""
    return items[world.rank::world.size]


def gather_rows(world: World, index: torch.Tensor, *columns: torch.Tensor | None) -> tuple:
    """Every rank's rows (CPU tensors), back in the order of `index`; every rank gets them all."""
    if not world.distributed:
        order = index.argsort()
        return tuple(c[order] if c is not None else None for c in columns)
    parts: list = [None] * world.size
    dist.all_gather_object(parts, (index, *columns))
    parts = [p for p in parts if len(p[0])]
    order = torch.cat([p[0] for p in parts]).argsort()
    return tuple(torch.cat([p[k] for p in parts])[order] if parts[0][k] is not None else None
                 for k in range(1, len(columns) + 1))
