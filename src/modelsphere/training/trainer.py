"""What the epoch loop works with, built from the config: the model (wrapped in
DDP when several processes train), AdamW, the schedule, the loss, the batch
size and the metric to monitor."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from modelsphere.core.devices import DeviceChoice, make_grad_scaler
from modelsphere.models.registry import build_model, spec_from_config
from modelsphere.models.spec import ModelSpec
from modelsphere.training.distributed import DistContext, check_batch_size
from modelsphere.training.metrics import resolve_monitor
from modelsphere.training.optimization import (
    choose_batch_size,
    make_loss,
    make_optimizer,
    make_scheduler,
)

log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """Everything the epoch loop works with."""

    model: nn.Module  # the plain module: evaluation, checkpoints, the artifact
    train_model: nn.Module  # what trains: the model, or DDP around it
    context: DistContext
    spec: ModelSpec
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: nn.Module
    scaler: Any
    device: DeviceChoice
    batch_size: int
    task: str
    monitor: str
    mode: str


def build_trainer(cfg, feature_state, task, tensors, device, context) -> Trainer:
    torch.manual_seed(cfg.seed)
    spec = spec_from_config(
        cfg.model, feature_state, task, train=tensors["train"], seed=cfg.seed
    )
    model = build_model(spec).to(device.device)
    train_model = model
    if context.enabled:
        ids = [device.device.index] if device.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids)
    batch_size = choose_batch_size(len(tensors["train"]), cfg.train)
    check_batch_size(batch_size, context)
    steps_per_epoch = math.ceil(len(tensors["train"]) / batch_size)
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    monitor, mode = resolve_monitor(task, cfg.train.monitor)
    trainer = Trainer(
        model=model,
        train_model=train_model,
        context=context,
        spec=spec,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg.train, steps_per_epoch),
        loss_fn=make_loss(task, tensors["train"].target, cfg.train.class_weights),
        scaler=make_grad_scaler(device),
        device=device,
        batch_size=batch_size,
        task=task,
        monitor=monitor,
        mode=mode,
    )
    log.info(
        "training %s on %d rows (%d val, %d test), %d parameters, "
        "batch %d, %d steps/epoch",
        spec.name,
        len(tensors["train"]),
        len(tensors["val"]),
        len(tensors["test"]),
        sum(p.numel() for p in model.parameters()),
        batch_size,
        steps_per_epoch,
    )
    return trainer
