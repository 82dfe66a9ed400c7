"""One training epoch, resumable mid-way, and the evaluation of a split.

An epoch walks a seeded random permutation of the training rows in index slices
(tensors stay on the device; no per-row DataLoader). `EpochProgress` is where an
epoch stands: its permutation, the next batch, the loss so far. It is saved in a
checkpoint when training is interrupted, so a resumed run continues with the very
next batch and ends bitwise-identical to an uninterrupted one on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from modelsphere.core.devices import DeviceChoice, autocast
from modelsphere.features.tensors import SplitTensors
from modelsphere.models.outputs import outputs_to_scores, predict_outputs
from modelsphere.training.distributed import DistContext, all_reduce
from modelsphere.training.metrics import compute_metrics

NO_BAD_BATCH = -1
SINGLE_PROCESS = DistContext()


@dataclass
class EpochProgress:
    epoch: int
    order: torch.Tensor  # the permutation of training rows for this epoch
    next_step: int  # the next batch to train
    total: torch.Tensor  # sum of per-row training losses so far (on the device)
    first_bad: torch.Tensor  # first batch with a non-finite loss, or NO_BAD_BATCH
    rows: int = 0  # rows this process's forward has trained on so far

    @classmethod
    def start(cls, epoch: int, n_rows: int, generator: torch.Generator, device):
        order = torch.randperm(n_rows, generator=generator).to(device)
        return cls(
            epoch,
            order,
            0,
            torch.zeros((), device=device),
            torch.full((), NO_BAD_BATCH, device=device),
        )

    def mean_loss(self) -> float:
        return float(self.total) / len(self.order)

    def bad_batch(self) -> int:
        return int(self.first_bad)

    def payload(self) -> Dict[str, Any]:
        return {
            "epoch": self.epoch,
            "order": self.order.cpu(),
            "next_step": self.next_step,
            "total": self.total.cpu(),
            "first_bad": self.first_bad.cpu(),
        }

    @classmethod
    def from_payload(cls, payload: Dict[str, Any], device) -> "EpochProgress":
        return cls(
            payload["epoch"],
            payload["order"].to(device),
            payload["next_step"],
            payload["total"].to(device),
            payload["first_bad"].to(device),
        )

    def count_resumed_rows(self, batch_size: int, context: DistContext) -> None:
        """Credit this process with its share of the batches trained before an
        interruption (a checkpoint holds one progress for every rank)."""
        n_rows = len(self.order)
        self.rows = 0
        for start in range(0, min(self.next_step * batch_size, n_rows), batch_size):
            rows = min(batch_size, n_rows - start)
            self.rows += len(range(context.rank, rows, context.world_size))


def run_epoch(
    model: nn.Module,
    data: SplitTensors,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: nn.Module,
    device: DeviceChoice,
    grad_clip_norm: Optional[float],
    scaler: Optional[torch.amp.GradScaler],
    progress: EpochProgress,
    should_stop: Callable[[], bool] = lambda: False,
    context: DistContext = SINGLE_PROCESS,
) -> bool:
    """Train from `progress.next_step` to the end of the epoch; return False if
    `should_stop()` said to stop first (progress then says where).

    The loss sum and the first bad batch are accumulated on the device: one host
    sync per epoch, not one per batch. Under DDP each rank takes every
    world_size-th row of each global batch and weights its mean loss by its share,
    so the averaged gradient is the single-process gradient of that batch.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    starts = range(progress.next_step * batch_size, len(data), batch_size)
    for step, start in enumerate(starts, progress.next_step):
        if stop_agreed(should_stop, context, progress.total.device):
            progress.next_step = step
            all_reduce(progress.total, "sum", context)
            return False
        global_index = progress.order[start : start + batch_size]
        index = global_index[context.rank :: context.world_size]
        with autocast(device):
            outputs = model(data.numeric[index], data.categorical[index])
            loss = batch_loss(loss_fn, outputs, data.target[index])
        if context.enabled:
            if index.shape[0] == 0:  # a short last batch: take part with no rows
                loss = outputs.sum() * 0.0
            else:
                share = index.shape[0] * context.world_size / global_index.shape[0]
                loss = loss * share
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
        if index.shape[0] == 0:
            continue
        rows = index.shape[0]
        progress.rows += rows
        detached = loss.detach().float()
        if context.enabled:
            detached = detached * global_index.shape[0] / (rows * context.world_size)
        progress.total += detached * rows
        newly_bad = (progress.first_bad == NO_BAD_BATCH) & ~torch.isfinite(detached)
        progress.first_bad = torch.where(
            newly_bad, torch.full_like(progress.first_bad, step), progress.first_bad
        )
    progress.next_step = -(-len(data) // batch_size)
    if context.enabled:
        all_reduce(progress.total, "sum", context)
        progress.first_bad = _first_bad_across_ranks(progress.first_bad, context)
    return True


def stop_agreed(should_stop, context: DistContext, device) -> bool:
    """A stop request on any rank stops every rank at the same batch."""
    wanted = should_stop()
    if not context.enabled:
        return wanted
    flag = torch.tensor([1 if wanted else 0], device=device)
    return bool(all_reduce(flag, "max", context).item())


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
    progress = EpochProgress.start(0, len(data), generator, data.target.device)
    run_epoch(
        model,
        data,
        batch_size,
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


def evaluate_split(
    model, data: SplitTensors, feature_state, task, device, batch_size, loss_fn
) -> Dict[str, float]:
    outputs = predict_outputs(model, data.numeric, data.categorical, batch_size, device)
    scores = outputs_to_scores(outputs, task, feature_state)
    target = data.target
    if task == "regression":
        stats = feature_state["target"]
        target = target * stats["std"] + stats["mean"]
    metrics = compute_metrics(task, scores, target)
    with torch.inference_mode():
        metrics["loss"] = float(batch_loss(loss_fn, outputs, data.target))
    return metrics
