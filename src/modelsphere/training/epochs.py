"""One training epoch, resumable mid-way, and the evaluation of a split.

An epoch walks a seeded random permutation of the training rows in index slices
(tensors stay on the device; no per-row DataLoader). `EpochProgress` is where an
epoch stands: its permutation, the next batch, the loss so far. It is saved in a
checkpoint when training is interrupted, so a resumed run continues with the very
next batch and ends bitwise-identical to an uninterrupted one on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import torch
from torch import nn

from modelsphere.core.devices import DeviceChoice, autocast
from modelsphere.core.errors import ModelSphereError
from modelsphere.core.progress import progress_bar
from modelsphere.features.target import smearing_factor, target_values, transform_of
from modelsphere.features.tensors import SplitTensors
from modelsphere.models.outputs import outputs_to_scores, predict_outputs
from modelsphere.training.distributed import (
    SINGLE_PROCESS,
    DistContext,
    all_reduce,
    gather_rows,
)
from modelsphere.training.metrics import compute_metrics
from modelsphere.training.sharding import BatchPlan

NO_BAD_BATCH = -1
Batch = Tuple[SplitTensors, int]  # a process's rows of a step, the global batch size
ANY_SIGNAL = 1  # a stop request that names no signal (signal numbers are > 1)


@dataclass
class EpochProgress:
    epoch: int
    order: torch.Tensor  # this epoch's permutation of the rows this process walks
    next_step: int  # the next batch to train
    total: torch.Tensor  # sum of per-row training losses so far (on the device)
    first_bad: torch.Tensor  # first batch with a non-finite loss, or NO_BAD_BATCH
    population: int  # the training rows of all processes together
    rows: int = 0  # rows this process's forward has trained on so far
    seed: int = 0  # what the shard permutations came from (train.ddp_data=shards)
    shards: Optional[Tuple[int, ...]] = None  # the rows each rank held (shards)
    streamed: bool = False  # walked row groups of the split file, not rows in memory

    @classmethod
    def start(cls, epoch: int, plan: BatchPlan, generator: torch.Generator, device):
        order, seed = plan.order(generator, device)
        return cls(
            epoch,
            order,
            0,
            torch.zeros((), device=device),
            torch.full((), NO_BAD_BATCH, device=device),
            plan.population,
            seed=seed,
            shards=plan.shards,
            streamed=plan.streamed,
        )

    def mean_loss(self) -> float:
        return float(self.total) / self.population

    def bad_batch(self) -> int:
        return int(self.first_bad)

    def payload(self) -> Dict[str, Any]:
        return {
            "epoch": self.epoch,
            "order": self.order.cpu(),
            "next_step": self.next_step,
            "total": self.total.cpu(),
            "first_bad": self.first_bad.cpu(),
            "population": self.population,
            "seed": self.seed,
            "shards": list(self.shards) if self.shards is not None else None,
            "streamed": self.streamed,
        }

    @classmethod
    def from_payload(cls, payload: Dict[str, Any], device) -> "EpochProgress":
        shards = payload.get("shards")
        return cls(
            payload["epoch"],
            payload["order"].to(device),
            payload["next_step"],
            payload["total"].to(device),
            payload["first_bad"].to(device),
            payload.get("population", len(payload["order"])),
            seed=payload.get("seed", 0),
            shards=tuple(shards) if shards is not None else None,
            streamed=bool(payload.get("streamed", False)),
        )

    def resume_on(self, plan: BatchPlan) -> None:
        """Take up an epoch a checkpoint saved (it holds rank 0's progress): this
        process's own permutation and the rows it had trained on; the loss so
        far stays with rank 0, which summed every rank's."""
        if self.streamed != plan.streamed:
            was, now = (
                "streamed" if flag else "held in memory"
                for flag in (self.streamed, plan.streamed)
            )
            raise ModelSphereError(
                f"the checkpoint stopped in epoch {self.epoch} of a run whose "
                f"training split was {was}; this run's is {now}: resume it with "
                "the same train.loading, or from its last completed epoch"
            )
        if self.shards != plan.shards:
            held = "every row" if self.shards is None else f"shards {self.shards}"
            raise ModelSphereError(
                f"the checkpoint stopped in epoch {self.epoch} of a run whose "
                f"processes held {held} of the training split; this run holds "
                f"{'every row' if plan.shards is None else f'shards {plan.shards}'}"
                ": resume it with the same number of processes and train.ddp_data"
                ", or from its last completed epoch"
            )
        if plan.sharded:
            self.order = plan.shard_order(self.seed, self.order.device)
        self.rows = plan.rows_before(self.next_step)
        if not plan.context.is_main:
            self.total.zero_()


def run_epoch(
    model: nn.Module,
    data: SplitTensors,
    plan: BatchPlan,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: nn.Module,
    device: DeviceChoice,
    grad_clip_norm: Optional[float],
    scaler: Optional[torch.amp.GradScaler],
    progress: EpochProgress,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Train from `progress.next_step` to the end of the epoch; return False if
    `should_stop()` said to stop first (progress then says where).

    The loss sum and the first bad batch are accumulated on the device: one host
    sync per epoch, not one per batch. Under DDP each process takes its rows of
    the step's global batch (`plan`, training/sharding.py) and weights its mean
    loss by its share, so the averaged gradient is the gradient of the global
    batch's mean loss.
    """
    model.train()
    context = plan.context
    params = [p for p in model.parameters() if p.requires_grad]
    batches = batches_of(data, plan, progress)
    bar = progress_bar(
        f"epoch {progress.epoch}",
        total=progress.population,
        done=min(progress.next_step * plan.batch_size, progress.population),
        show=plan.context.rank == 0,
    )
    with bar as advance:
        for step in range(progress.next_step, plan.steps()):
            if stop_agreed(should_stop, context, progress.total.device):
                progress.next_step = step
                all_reduce(progress.total, "sum", context)
                batches.close()  # a streamed split stops reading ahead
                return False
            batch, global_rows = next(batches)
            with autocast(device):
                outputs = model(batch.numeric, batch.categorical)
                loss = batch_loss(loss_fn, outputs, batch.target)
            rows = len(batch)
            if context.enabled:
                if rows == 0:  # a short last batch: take part with no rows
                    loss = outputs.sum() * 0.0
                else:
                    loss = loss * (rows * context.world_size / global_rows)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(params, grad_clip_norm, foreach=True)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            advance(global_rows)
            if rows == 0:
                continue
            progress.rows += rows
            detached = loss.detach().float()
            if context.enabled:
                detached = detached * global_rows / (rows * context.world_size)
            progress.total += detached * rows
            newly_bad = (progress.first_bad == NO_BAD_BATCH) & ~torch.isfinite(detached)
            progress.first_bad = torch.where(
                newly_bad, torch.full_like(progress.first_bad, step), progress.first_bad
            )
    batches.close()
    progress.next_step = plan.steps()
    if context.enabled:
        all_reduce(progress.total, "sum", context)
        progress.first_bad = _first_bad_across_ranks(progress.first_bad, context)
    return True


def batches_of(data, plan: BatchPlan, progress: EpochProgress) -> Iterator[Batch]:
    """The epoch's batches from `progress.next_step` on, each with the size of
    its global batch: slices of the tensors in memory, or what a streamed split
    (training/streaming.py) reads."""
    if plan.streamed:
        return data.batches(plan, progress)
    return _memory_batches(data, plan, progress)


def _memory_batches(
    data: SplitTensors, plan: BatchPlan, progress: EpochProgress
) -> Iterator[Batch]:
    for step in range(progress.next_step, plan.steps()):
        index, global_rows = plan.batch(progress.order, step)
        batch = SplitTensors(
            data.numeric[index], data.categorical[index], data.target[index]
        )
        yield batch, global_rows


def stop_agreed(should_stop, context: DistContext, device) -> bool:
    """A stop request on any rank stops every rank at the same batch, and a
    rank that got no signal itself takes its peer's (rank 0, which requeues a
    pre-empted SLURM job, then knows it was pre-empted)."""
    wanted = should_stop()
    if not context.enabled:
        return wanted
    own = getattr(should_stop, "signum", None)
    flag = torch.tensor([(own or ANY_SIGNAL) if wanted else 0], device=device)
    agreed = int(all_reduce(flag, "max", context).item())
    if agreed > ANY_SIGNAL and own is None and hasattr(should_stop, "signum"):
        should_stop.signum = agreed
    return agreed > 0


def _first_bad_across_ranks(first_bad: torch.Tensor, context: DistContext):
    never = torch.iinfo(torch.int64).max
    bad = torch.where(first_bad < 0, torch.full_like(first_bad, never), first_bad)
    bad = all_reduce(bad.to(torch.int64), "min", context)
    return torch.where(bad == never, torch.full_like(bad, NO_BAD_BATCH), bad)


def train_one_epoch(
    model: nn.Module,
    data: SplitTensors,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: nn.Module,
    device: DeviceChoice,
    grad_clip_norm: Optional[float],
    generator: torch.Generator,
    scaler: Optional[torch.amp.GradScaler],
) -> Tuple[float, int]:
    """A whole epoch from a fresh permutation: (mean loss, first bad batch)."""
    plan = BatchPlan(batch_size, SINGLE_PROCESS, len(data))
    progress = EpochProgress.start(0, plan, generator, data.target.device)
    run_epoch(
        model,
        data,
        plan,
        optimizer,
        scheduler,
        loss_fn,
        device,
        grad_clip_norm,
        scaler,
        progress,
    )
    return progress.mean_loss(), progress.bad_batch()


def batch_loss(
    loss_fn: nn.Module, outputs: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """The loss of a batch. Outputs of shape [rows, k, n_outputs] come from an
    ensemble in training mode (tabm): the loss is the mean of the k members'
    losses, each member scored on every row."""
    outputs = outputs.float()
    if outputs.ndim == 3:
        target = target.repeat_interleave(outputs.shape[1])
        outputs = outputs.flatten(0, 1)
    if isinstance(loss_fn, nn.MSELoss):
        return loss_fn(outputs[:, 0], target)
    return loss_fn(outputs, target)


def split_outputs(
    model, data: SplitTensors, device, batch_size, shards: DistContext = SINGLE_PROCESS
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The model's raw outputs and the encoded targets of a whole split. When the
    processes of `shards` each hold a shard of the split (in rank order), each
    scores its own and both are gathered. `data`: the split's tensors, or a
    streamed split read a row group at a time (its `chunks()`)."""
    parts: Iterable[SplitTensors] = data.chunks() if hasattr(data, "chunks") else [data]
    outputs, targets = [], []
    for part in parts:
        outputs.append(
            predict_outputs(model, part.numeric, part.categorical, batch_size, device)
        )
        targets.append(part.target)
    outputs = gather_rows(_joined(outputs).contiguous(), shards)
    return outputs, gather_rows(_joined(targets), shards)


def evaluate_split(
    model,
    data: SplitTensors,
    feature_state,
    task,
    device,
    batch_size,
    loss_fn,
    shards: DistContext = SINGLE_PROCESS,
) -> Dict[str, float]:
    """The split's metrics (every process returns those of the whole split)."""
    outputs, encoded = split_outputs(model, data, device, batch_size, shards)
    scores = outputs_to_scores(outputs, task, feature_state)
    target = encoded
    if task == "regression":
        target = target_values(encoded, feature_state["target"])
    metrics = compute_metrics(task, scores, target)
    with torch.inference_mode():
        metrics["loss"] = float(batch_loss(loss_fn, outputs, encoded))
    return metrics


def fit_smearing(
    model, data: SplitTensors, feature_state, device, batch_size, shards
) -> Dict[str, Any]:
    """The regression target's state with Duan's smearing factor fitted on this
    (validation) split, for a log-transformed target (features/target.py)."""
    target = feature_state["target"]
    if transform_of(target) == "none":
        return target
    outputs, encoded = split_outputs(model, data, device, batch_size, shards)
    return {**target, "smearing": smearing_factor(outputs, encoded, target)}


def _joined(parts):
    return parts[0] if len(parts) == 1 else torch.cat(parts)
