"""DistributedDataParallel under torchrun: who this process is, and the few
collective operations the training loop needs.

`torchrun --nproc_per_node=N train.py ...` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK set. Every process trains on its share of each global
batch (the batch of the single-process run, split row-wise across ranks), DDP
averages the gradients, losses are summed across ranks, and only rank 0 writes
the run dir. Backend: nccl on CUDA, gloo on the CPU. Without torchrun, nothing
here does anything.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ModelSphereError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not under torchrun)."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device_type: str) -> DistContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    context = DistContext(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(context.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info(
        "distributed: rank %d of %d (%s backend)", context.rank, world_size, backend
    )
    if not context.is_main:  # rank 0 speaks for the run; others only warn
        logging.getLogger("modelsphere").setLevel(logging.WARNING)
    return context


def check_batch_size(batch_size: int, context: DistContext) -> None:
    if context.enabled and batch_size < context.world_size:
        raise ModelSphereError(
            f"train.batch_size={batch_size} is smaller than the {context.world_size} "
            "processes sharing each batch"
        )


def all_reduce(tensor: torch.Tensor, op: str, context: DistContext) -> torch.Tensor:
    """Sum, max or min across ranks (in place); a no-op in a single process."""
    if context.enabled:
        ops = {
            "sum": dist.ReduceOp.SUM,
            "max": dist.ReduceOp.MAX,
            "min": dist.ReduceOp.MIN,
        }
        dist.all_reduce(tensor, op=ops[op])
    return tensor


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
