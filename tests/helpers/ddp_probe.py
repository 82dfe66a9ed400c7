"""One DDP epoch through `run_epoch`, recorded step by step (run under torchrun).

    python -m torch.distributed.run --standalone --nproc_per_node=2 \
        tests/helpers/ddp_probe.py OUT [replicated|shards]

trains a small regression net for one epoch on 2 gloo processes and writes, per
rank, `OUT/rank<r>.pt`: the row ids each step's forward received and the weights
after each optimizer step, then whether the replica check passes, before and
after rank 1's weights are nudged. `tests/pipeline/test_distributed.py` reads
them back and also runs `train_probe` in one process for the reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from modelsphere.core.devices import select_device
from modelsphere.core.errors import ModelSphereError
from modelsphere.features.tensors import SplitTensors
from modelsphere.training.distributed import (
    DistContext,
    all_reduce,
    check_replicas_agree,
    init_distributed,
    shutdown,
)
from modelsphere.training.epochs import EpochProgress, run_epoch
from modelsphere.training.optimization import make_optimizer
from modelsphere.training.sharding import BatchPlan, shard_rows

ROWS = 203  # odd, and not a multiple of the batch: the last batch is short
BATCH_SIZE = 32
SEED = 7
COLLECTIVES = 200  # all-reduces whose tensors the backend must have let go of


class RecordingNet(nn.Module):
    """A small net whose forward records which rows it was given (column 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))
        self.seen: list[torch.Tensor] = []

    def forward(self, numeric, categorical):
        self.seen.append(numeric[:, 0].long().clone())
        return self.net(numeric[:, 1:])


class WeightsAfterEachStep:
    """Stands in for the LR scheduler, which `run_epoch` steps after every update."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.weights: list[torch.Tensor] = []

    def step(self) -> None:
        params = [p.detach().flatten() for p in self.model.parameters()]
        self.weights.append(torch.cat(params).clone())


def probe_data() -> SplitTensors:
    generator = torch.Generator().manual_seed(SEED)
    features = torch.randn(ROWS, 3, generator=generator)
    ids = torch.arange(ROWS, dtype=torch.float32).unsqueeze(1)
    target = features @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(
        ROWS, generator=generator
    )
    categorical = torch.zeros(ROWS, 0, dtype=torch.int64)
    return SplitTensors(torch.cat([ids, features], dim=1), categorical, target)


def train_probe(
    context: DistContext, ddp_data: str = "replicated"
) -> tuple[nn.Module, dict]:
    """One epoch; DDP around the net when `context` has more than one process.
    With `ddp_data="shards"` this process holds only its shard of the rows."""
    torch.manual_seed(SEED)
    model = RecordingNet()
    train_model = DistributedDataParallel(model) if context.enabled else model
    optimizer = make_optimizer(model, lr=0.05, weight_decay=0.0)
    recorder = WeightsAfterEachStep(model)
    plan = BatchPlan.for_run(BATCH_SIZE, context, ROWS, ddp_data)
    data = probe_data()
    if plan.sharded:
        held = torch.tensor(shard_rows(ROWS, context))
        data = SplitTensors(
            data.numeric[held], data.categorical[held], data.target[held]
        )
    progress = EpochProgress.start(
        1, plan, torch.Generator().manual_seed(SEED), torch.device("cpu")
    )
    run_epoch(
        train_model,
        data,
        plan,
        optimizer,
        recorder,
        nn.MSELoss(),
        select_device("cpu"),
        1.0,
        None,
        progress,
    )
    return model, {
        "order": progress.order,
        "held": data.numeric[:, 0].long(),
        "seen": model.seen,
        "weights": recorder.weights,
        "rows": progress.rows,
        "mean_loss": progress.mean_loss(),
    }


def replay(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """One process taking the given global batches (row ids) in turn: the
    weights after each step, for the reference."""
    torch.manual_seed(SEED)
    model = RecordingNet()
    optimizer = make_optimizer(model, lr=0.05, weight_decay=0.0)
    recorder = WeightsAfterEachStep(model)
    data = probe_data()
    for rows in batches:
        loss = nn.MSELoss()(
            model(data.numeric[rows], data.categorical[rows])[:, 0], data.target[rows]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(list(model.parameters()), 1.0, foreach=True)
        optimizer.step()
        recorder.step()
    return recorder.weights


def replica_check(model: nn.Module, context: DistContext) -> str:
    try:
        check_replicas_agree(model, context)
    except ModelSphereError as error:
        return str(error)
    return "agree"


def held_after_all_reduce(context: DistContext) -> int:
    """References to an all-reduced tensor once `all_reduce` has returned: 1
    (this function's) when the backend let go of it."""
    tensor = torch.ones(8)
    all_reduce(tensor, "sum", context)
    return tensor._use_count()


def main(out: Path, ddp_data: str) -> None:
    context = init_distributed("cpu", 300.0)
    try:
        model, record = train_probe(context, ddp_data)
        record["after_training"] = replica_check(model, context)
        if context.rank == 1:  # a replica that drifted must be caught
            with torch.no_grad():
                next(model.parameters()).add_(1e-3)
        record["after_drift"] = replica_check(model, context)
        record["kept_after_all_reduce"] = [
            held_after_all_reduce(context) for _ in range(COLLECTIVES)
        ]
        torch.save(record, out / f"rank{context.rank}.pt")
    finally:
        shutdown(context)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "replicated")
