"""What the epoch loop works with, built from the config: the model (wrapped in
DDP when several processes train), AdamW, the schedule, the loss, the batch
size and the metric to monitor."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from modelsphere.core.devices import DeviceChoice, make_grad_scaler
from modelsphere.models.registry import build_model, spec_from_config
from modelsphere.models.spec import ModelSpec
from modelsphere.core.errors import ModelSphereError
from modelsphere.features.tensors import SplitTensors
from modelsphere.training.distributed import (
    DistContext,
    check_batch_size,
)
from modelsphere.training.metrics import resolve_monitor
from modelsphere.training.optimization import (
    choose_batch_size,
    make_loss,
    make_optimizer,
    make_scheduler,
)
from modelsphere.training.sharding import BatchPlan
from modelsphere.training.streaming import StreamPlan

log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """Everything the epoch loop works with."""

    model: nn.Module  # the plain module: evaluation, checkpoints, the artifact
    train_model: nn.Module  # what trains: the model, or DDP around it
    context: DistContext
    plan: BatchPlan  # which rows each process trains on at each step
    spec: ModelSpec
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: nn.Module
    scaler: Any
    device: DeviceChoice
    task: str
    monitor: str
    mode: str

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    @property
    def shards(self) -> DistContext:
        return self.plan.shard_context


@dataclass
class TrainingData:
    """What the trainer is built from: this process's training targets (class
    counts), the rows the model's data-dependent settings are fitted on, the
    size of the whole split and, when it is streamed, its row groups' sizes."""

    target: torch.Tensor
    fit_sample: Optional[SplitTensors]  # None: the model fits nothing on data
    n_rows: int
    group_rows: Optional[Tuple[int, ...]] = None  # streamed; None: in memory


def build_trainer(
    cfg, feature_state, task, train: TrainingData, device, context
) -> Trainer:
    torch.manual_seed(cfg.seed)
    spec = spec_from_config(
        cfg.model, feature_state, task, train=train.fit_sample, seed=cfg.seed
    )
    model = build_model(spec).to(device.device)
    train_model = model
    if context.enabled:
        ids = [device.device.index] if device.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids)
    batch_size = choose_batch_size(train.n_rows, cfg.train)
    check_batch_size(batch_size, context)
    chosen = cfg.train.batch_size is None
    if train.group_rows is not None:
        plan = StreamPlan.for_stream(
            batch_size,
            context,
            train.group_rows,
            cfg.train.shuffle_buffer_rows,
            chosen=chosen,
        )
    else:
        plan = BatchPlan.for_run(
            batch_size, context, train.n_rows, cfg.train.ddp_data, chosen=chosen
        )
    if cfg.model.normalization == "batchnorm" and plan.smallest_share() == 1:
        raise ModelSphereError(
            f"model.normalization=batchnorm needs 2 or more rows in every forward, "
            f"but with train.batch_size={plan.batch_size} on {train.n_rows} training "
            f"rows and {context.world_size} process(es) one step would give a "
            "process a single row: pick another train.batch_size, or "
            "model.normalization=layernorm"
        )
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    monitor, mode = resolve_monitor(task, cfg.train.monitor)
    trainer = Trainer(
        model=model,
        train_model=train_model,
        context=context,
        plan=plan,
        spec=spec,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg.train, plan.steps()),
        loss_fn=make_loss(
            task, train.target, cfg.train.class_weights, plan.shard_context
        ),
        scaler=make_grad_scaler(device),
        device=device,
        task=task,
        monitor=monitor,
        mode=mode,
    )
    log.info(
        "training %s on %d rows, %d parameters, batch %d, %d steps/epoch%s",
        spec.name,
        train.n_rows,
        sum(p.numel() for p in model.parameters()),
        plan.batch_size,
        plan.steps(),
        _holding(plan),
    )
    return trainer


def _holding(plan: BatchPlan) -> str:
    """How this process holds the training split, for the log."""
    if plan.streamed:
        return (
            f"; streamed from its row groups ({plan.rows_held()} rows here) "
            f"through a shuffle buffer of {plan.buffer_rows}+ rows"
        )
    if plan.sharded:
        return (
            f"; each of {plan.context.world_size} processes holds its shard "
            f"({plan.rows_held()} rows here)"
        )
    return ""
