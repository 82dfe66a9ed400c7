"""DistributedDataParallel under torchrun or srun: who this process is, and the
few collective operations the training loop needs.

`torchrun --nproc_per_node=N train.py ...` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK set; `srun python train.py` starts one per SLURM task
(core/launch.py reads either). Every process trains on its share of each global
batch (training/sharding.py says which rows), DDP averages the gradients, losses
are summed across ranks, and only rank 0 writes the run dir. Backend: nccl on
CUDA, gloo on the CPU. In a single process, nothing here does anything.

Every wait on the other processes is bounded by `train.ddp_timeout_s`: reaching
the rendezvous, and each collective operation. A process whose peer died (its
connection closes) or hung (the wait runs out) stops with one line saying so,
and the last checkpoint stays as it was.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, List

import torch
import torch.distributed as dist
from torch import nn

from modelsphere.core.errors import ModelSphereError, PeersLost
from modelsphere.core.launch import launch_from_environment

log = logging.getLogger(__name__)

# Replicas apply the same averaged gradient with the same optimizer, so their
# weights agree bitwise on one kind of device; this bound only leaves room for a
# collective whose reduction order differs between ranks.
REPLICA_TOLERANCE = 1e-6

# How often, and for how long at most, a collective's caller waits for the
# backend's worker threads to let go of its tensors (see `collective`).
RELEASE_POLL_S = 1e-4
RELEASE_WAIT_S = 5.0


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


SINGLE_PROCESS = DistContext()


def init_distributed(device_type: str, timeout_s: float) -> DistContext:
    """Join the other processes (waiting at most `timeout_s` for them, and at
    most that long in each collective operation later)."""
    launch = launch_from_environment()
    if launch.world_size <= 1:
        return DistContext()
    os.environ.update(launch.rendezvous_environment())  # srun: as torchrun would
    context = DistContext(
        rank=launch.rank,
        world_size=launch.world_size,
        local_rank=launch.local_rank,
    )
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":  # srun --gpus-per-task=1: each task sees one GPU
        torch.cuda.set_device(context.local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend=backend, timeout=timedelta(seconds=timeout_s)
            )
        except dist.DistError as exc:
            raise ModelSphereError(
                f"process {context.rank} of {context.world_size} could not reach "
                f"the rendezvous at {os.environ.get('MASTER_ADDR')}:"
                f"{os.environ.get('MASTER_PORT')} within train.ddp_timeout_s="
                f"{timeout_s:g} s ({first_line(exc)}): check that every process "
                "was started, that the host name resolves from here and that the "
                "port is open"
            ) from None
    log.info(
        "distributed (%s): rank %d of %d (%s backend)",
        launch.launcher,
        context.rank,
        context.world_size,
        backend,
    )
    if not context.is_main:  # rank 0 speaks for the run; others only warn
        logging.getLogger("modelsphere").setLevel(logging.WARNING)
    return context


def first_line(exc: BaseException) -> str:
    """An error's first line: torch's own carry a C++ stack below it."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# What gloo's transport says when a peer died, froze past the timeout or became
# unreachable (lower case): its own errors name it, others only the connection.
PEER_FAILURE_MARKERS = (
    "gloo",
    "pair closure",
    "connection closed by peer",
    "connection reset by peer",
)


def is_peer_failure(exc: BaseException, context: DistContext) -> bool:
    """Whether `exc` is a collective operation that failed because another
    process died, hung past the timeout, or became unreachable (gloo reports it
    as a RuntimeError from its transport; NCCL as a DistError)."""
    if not context.enabled or not isinstance(exc, RuntimeError):
        return False
    message = str(exc).lower()
    return isinstance(exc, dist.DistError) or any(
        marker in message for marker in PEER_FAILURE_MARKERS
    )


def peer_failure(
    exc: BaseException, context: DistContext, timeout_s: float, then: str
) -> ModelSphereError:
    """The one-line error of a run whose peers failed (see `is_peer_failure`);
    `then` says what is left to resume from."""
    return PeersLost(
        f"process {context.rank} of {context.world_size} lost the other processes "
        f"({first_line(exc)}): one of them stopped, waited more than "
        f"train.ddp_timeout_s={timeout_s:g} s, or the network between them "
        f"failed (see its own log); {then}"
    )


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
        collective(lambda: dist.all_reduce(tensor, op=ops[op]), [tensor])
    return tensor


def collective(run: Callable[[], object], tensors: List[torch.Tensor]) -> None:
    """`run()` (a collective operation on `tensors`), then wait until the
    backend's worker threads have let go of `tensors` (back to the reference
    counts they had before).

    gloo's worker thread drops its references to a collective's tensors just
    after the caller's wait returns, and dropping a tensor that Python also
    holds needs the GIL. If the caller is already leaving the interpreter, the
    worker thread is ended inside a C++ destructor and the process aborts
    ("terminate called without an active exception", SIGABRT) after a run
    that succeeded: torchrun then reports the whole job failed. Sleeping hands
    the GIL over; the wait is microseconds, bounded by RELEASE_WAIT_S.
    """
    held = [tensor._use_count() for tensor in tensors]
    run()
    if dist.get_backend() != "gloo":
        return  # NCCL lets go from its watchdog thread, on its own schedule
    deadline = time.monotonic() + RELEASE_WAIT_S
    while any(tensor._use_count() > n for tensor, n in zip(tensors, held)):
        if time.monotonic() > deadline:
            log.debug("gloo kept a collective's tensors past %g s", RELEASE_WAIT_S)
            return
        time.sleep(RELEASE_POLL_S)


def gather_counts(count: int, context: DistContext, device) -> List[int]:
    """Every rank's `count`, in rank order (`[count]` in a single process)."""
    if not context.enabled:
        return [count]
    mine = torch.tensor([count], dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(context.world_size)]
    collective(lambda: dist.all_gather(every, mine), [mine, *every])
    return [int(value) for value in every]


def gather_rows(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Every rank's rows of `tensor`, concatenated in rank order (the tensor
    itself in a single process). Ranks may hold different numbers of rows."""
    if not context.enabled:
        return tensor
    counts = gather_counts(tensor.shape[0], context, tensor.device)
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    every = [torch.empty_like(padded) for _ in counts]
    collective(lambda: dist.all_gather(every, padded), [padded, *every])
    return torch.cat([part[:count] for part, count in zip(every, counts)])


def check_replicas_agree(model: nn.Module, context: DistContext) -> None:
    """Stop if this rank's weights differ from rank 0's.

    DDP keeps the replicas identical by averaging gradients before every
    optimizer step; a rank whose weights drifted trained on its own, and its
    share of the data never reached the saved model.
    """
    if not context.enabled:
        return
    mine = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    reference = mine.clone()
    collective(lambda: dist.broadcast(reference, src=0), [reference])
    drift = (mine - reference).abs().max().reshape(1)
    all_reduce(drift, "max", context)
    if float(drift) > REPLICA_TOLERANCE:
        raise ModelSphereError(
            f"the {context.world_size} processes ended training with different "
            f"weights (largest difference {float(drift):.3g}): gradients were not "
            "averaged across ranks, so the run dir would hold one rank's model only"
        )


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
