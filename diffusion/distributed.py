"""Process-group plumbing for ``torchrun``: one process per device, rank zero does the writing.

``torchrun --nproc_per_node=N train.py ...`` (multi-node: add ``--nnodes``, ``--node_rank`` and
``--rdzv_endpoint`` as usual) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a plain
``python train.py`` sets none and runs as the single process of a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run; the collectives are no-ops in a world of one."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any (a CPU all-reduce: no device sync)."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_on_main(self, obj: Any) -> list[Any] | None:
        """Every process's ``obj``, in rank order, on rank zero; None on the others."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank zero's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def from_environment() -> Distributed:
    """This process's ranks as set by torchrun (a world of one when they are not set)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return Distributed(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
    )


def init_process_group(env: Distributed, device: torch.device) -> None:
    """Join the process group: NCCL for CUDA tensors and gloo for CPU ones (gloo alone on CPU)."""
    if env.enabled and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
