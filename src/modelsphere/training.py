"""The training run: data -> features -> model -> epochs -> artifact.

`run_training` reads top to bottom as the story of a run. Training tensors live on
the device and every epoch walks a seeded random permutation in index slices
(no per-row DataLoader); AdamW with a cosine schedule, gradient clipping, early
stopping on a validation metric with the best weights restored; AMP on CUDA only.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import plots
from .artifacts import save_artifact
from .checkpoint import load_checkpoint, save_checkpoint
from .config import to_plain, validate_train_app
from .devices import (
    DeviceChoice,
    autocast,
    configure_threads,
    make_grad_scaler,
    select_device,
)
from .errors import ModelSphereError
from .features import encode_target, fit_feature_state, transform_features
from .engines import predict_outputs
from .inference import outputs_to_scores
from .fileio import atomic_write_json, atomic_write_text
from .metrics import compute_metrics, is_improvement, resolve_monitor
from .model import TabularMLP, build_model, spec_from_config
from .preprocessing import SPLITS, ProcessedData, load_split, prepare_data
from .provenance import provenance
from .runs import update_latest

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CURVE_FILE = "training_curve.png"
NO_BAD_BATCH = -1


@dataclass
class SplitTensors:
    """One split, transformed and on the device."""

    numeric: torch.Tensor
    categorical: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return self.target.shape[0]


def run_training(cfg: DictConfig, run_dir: str | Path) -> float:
    """Train a model as `cfg` says, write the run dir, return the best val metric."""
    run_dir = Path(run_dir)
    resume = load_checkpoint(cfg.train.resume) if cfg.train.resume else None
    if resume is not None:
        cfg, run_dir = _resume_config(cfg, Path(cfg.train.resume))
    validate_train_app(cfg)
    device = _setup(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))

    data = prepare_data(cfg.data, cfg.paths.data_dir)
    frames = {split: load_split(data, split) for split in SPLITS}
    feature_state = fit_feature_state(
        frames["train"], data.schema, cfg.model.features, cfg.seed
    )
    tensors = {
        split: _to_tensors(frames[split], feature_state, device, split)
        for split in SPLITS
    }
    task = data.schema.task
    monitor, mode = resolve_monitor(task, cfg.train.monitor)

    torch.manual_seed(cfg.seed)
    spec = spec_from_config(cfg.model, feature_state, task)
    model = build_model(spec).to(device.device)
    batch_size = choose_batch_size(len(tensors["train"]), cfg.train)
    steps_per_epoch = math.ceil(len(tensors["train"]) / batch_size)
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.train, steps_per_epoch)
    loss_fn = make_loss(task, tensors["train"].target, cfg.train.class_weights)
    scaler = make_grad_scaler(device)
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

    loop = _LoopState.fresh(cfg.seed)
    if resume is not None:
        loop = _LoopState.restore(resume, model, optimizer, scheduler, scaler)
    started = time.perf_counter()
    for epoch in range(loop.epoch + 1, cfg.train.max_epochs + 1):
        if loop.stopped_early:
            break
        epoch_start = time.perf_counter()
        train_loss, bad_batch = train_one_epoch(
            model,
            tensors["train"],
            batch_size,
            optimizer,
            scheduler,
            loss_fn,
            device,
            cfg.train.grad_clip_norm,
            loop.generator,
            scaler,
        )
        seconds = time.perf_counter() - epoch_start
        if bad_batch != NO_BAD_BATCH:
            _stop_on_nonfinite(run_dir, epoch, bad_batch, loop.epoch)
        val = evaluate_split(
            model,
            tensors["val"],
            feature_state,
            task,
            device,
            cfg.train.eval_batch_size,
            loss_fn,
        )
        if math.isnan(val[monitor]):
            raise ModelSphereError(
                f"val_{monitor} is undefined in epoch {epoch} (NaN): the validation "
                f"split ({len(tensors['val'])} rows) may hold a single class; use a "
                "larger data.split.val_fraction or train.monitor=loss"
            )
        loop.record(epoch, train_loss, val, optimizer, seconds, len(tensors["train"]))
        improved = is_improvement(
            val[monitor], loop.best_value, mode, cfg.train.min_delta
        )
        if improved:
            loop.best_value, loop.best_epoch, loop.bad_epochs = val[monitor], epoch, 0
            loop.best_state = {
                k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            }
        else:
            loop.bad_epochs += 1
        patience = cfg.train.early_stopping_patience
        loop.stopped_early = patience is not None and loop.bad_epochs >= patience
        loop.epoch = epoch
        save_checkpoint(run_dir, loop.payload(model, optimizer, scheduler, scaler))
        log.info(
            "epoch %d/%d  loss %.4f  val_loss %.4f  val_%s %.4f%s  lr %.2e  "
            "%.0f rows/s",
            epoch,
            cfg.train.max_epochs,
            train_loss,
            val["loss"],
            monitor,
            val[monitor],
            " *" if improved else "",
            loop.history[-1]["lr"],
            loop.history[-1]["rows_per_second"],
        )
    if loop.stopped_early:
        log.info(
            "early stopping: no val_%s improvement for %d epochs",
            monitor,
            loop.bad_epochs,
        )

    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    final = {
        split: evaluate_split(
            model,
            tensors[split],
            feature_state,
            task,
            device,
            cfg.train.eval_batch_size,
            loss_fn,
        )
        for split in ("val", "test")
    }
    summary = _metrics_summary(
        loop, final, monitor, mode, time.perf_counter() - started, batch_size, device
    )
    atomic_write_json(run_dir / METRICS_FILE, summary)
    extra = {
        "metrics": summary["final"],
        "training": summary["training"],
        "data": _data_record(data),
        "provenance": provenance(),
    }
    save_artifact(
        run_dir, model, spec, feature_state, data.schema, to_plain(cfg), extra
    )
    if cfg.train.plot and loop.history:
        plots.training_curve(
            loop.history, monitor, loop.best_epoch, run_dir / CURVE_FILE
        )
    update_latest(cfg.paths.outputs_dir, run_dir)
    log.info(
        "best val_%s %.4f at epoch %d; test %s; run dir %s",
        monitor,
        loop.best_value,
        loop.best_epoch,
        _short(final["test"]),
        run_dir,
    )
    return float(loop.best_value)


# ----------------------------------------------------------------------------
# Setup


def _setup(cfg: DictConfig) -> DeviceChoice:
    device = select_device(cfg.device.name, cfg.device.amp, cfg.device.amp_dtype)
    log.info("device: %s (%s)", device.device, device.reason)
    configure_threads(cfg.device.num_threads)
    if cfg.device.deterministic:
        if device.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return device


def _resume_config(cfg: DictConfig, run_dir: Path) -> Tuple[DictConfig, Path]:
    """The resumed run's own config; only device and a longer max_epochs may change."""
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        raise ModelSphereError(
            f"train.resume={run_dir}: {CONFIG_FILE} is missing there"
        )
    saved = OmegaConf.load(saved_path)
    saved.device = cfg.device
    if cfg.train.max_epochs != saved.train.max_epochs:
        log.info(
            "resume: max_epochs %d -> %d", saved.train.max_epochs, cfg.train.max_epochs
        )
        saved.train.max_epochs = cfg.train.max_epochs
    saved.train.resume = str(run_dir)
    log.info("resuming %s from its last checkpoint", run_dir)
    return saved, run_dir


def _to_tensors(frame, feature_state, device: DeviceChoice, split: str) -> SplitTensors:
    arrays = transform_features(frame, feature_state)
    target = encode_target(
        frame[feature_state["target"]["name"]], feature_state, f"{split} split"
    )
    return SplitTensors(
        torch.from_numpy(arrays.numeric).to(device.device),
        torch.from_numpy(arrays.categorical).to(device.device),
        torch.from_numpy(target).to(device.device),
    )


def choose_batch_size(n_train: int, train_cfg: Any) -> int:
    """The configured batch size, or the largest power of two giving about
    `batches_per_epoch_target` steps per epoch, within [min, max]."""
    if train_cfg.batch_size is not None:
        return int(min(train_cfg.batch_size, n_train))
    target = max(1, n_train // train_cfg.batches_per_epoch_target)
    power = 2 ** int(math.floor(math.log2(target)))
    return int(
        min(max(power, train_cfg.batch_size_min), train_cfg.batch_size_max, n_train)
    )


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norm layers and embeddings."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            plain_weight = name == "weight" and isinstance(module, nn.Linear)
            (decay if plain_weight else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def make_scheduler(optimizer, train_cfg: Any, steps_per_epoch: int):
    """Linear warm-up, then cosine decay to zero (or constant), stepped per batch."""
    total = max(1, train_cfg.max_epochs * steps_per_epoch)
    warmup = min(train_cfg.warmup_epochs * steps_per_epoch, total - 1)
    cosine = train_cfg.scheduler == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_loss(task: str, train_target: torch.Tensor, class_weights: str) -> nn.Module:
    """BCE-with-logits, cross-entropy or MSE (on the standardised target)."""
    if task == "regression":
        return nn.MSELoss()
    if task == "binary":
        pos_weight = None
        if class_weights == "balanced":
            positives = train_target.float().sum()
            pos_weight = (
                (len(train_target) - positives) / positives.clamp_min(1)
            ).reshape(1)
        return _BinaryLoss(pos_weight)
    weight = None
    if class_weights == "balanced":
        counts = torch.bincount(train_target).float().clamp_min(1)
        weight = len(train_target) / (len(counts) * counts)
    return nn.CrossEntropyLoss(weight=weight)


class _BinaryLoss(nn.Module):
    def __init__(self, pos_weight: Optional[torch.Tensor]):
        super().__init__()
        self.inner = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.inner(logits[:, 0], target.float())


# ----------------------------------------------------------------------------
# The loop


def train_one_epoch(
    model: TabularMLP,
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
    """One pass over a seeded permutation in index slices.

    Returns the mean training loss and the index of the first batch whose loss
    was not finite (NO_BAD_BATCH if none). Both are accumulated on the device, so
    there is one host sync per epoch, not one per batch.
    """
    model.train()
    n_rows = len(data)
    order = torch.randperm(n_rows, generator=generator).to(data.target.device)
    total = torch.zeros((), device=data.target.device)
    first_bad = torch.full((), NO_BAD_BATCH, device=data.target.device)
    params = [p for p in model.parameters() if p.requires_grad]
    for step, start in enumerate(range(0, n_rows, batch_size)):
        index = order[start : start + batch_size]
        with autocast(device):
            outputs = model(data.numeric[index], data.categorical[index])
            loss = _loss(loss_fn, outputs, data.target[index])
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
        detached = loss.detach().float()
        total += detached * index.shape[0]
        newly_bad = (first_bad == NO_BAD_BATCH) & ~torch.isfinite(detached)
        first_bad = torch.where(newly_bad, torch.full_like(first_bad, step), first_bad)
    return float(total) / n_rows, int(first_bad)


def _loss(
    loss_fn: nn.Module, outputs: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    outputs = outputs.float()
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
        target = (
            target * feature_state["target"]["std"] + feature_state["target"]["mean"]
        )
    metrics = compute_metrics(task, scores, target)
    with torch.inference_mode():
        metrics["loss"] = float(_loss(loss_fn, outputs, data.target))
    return metrics


# ----------------------------------------------------------------------------
# Loop state: what a checkpoint holds


@dataclass
class _LoopState:
    generator: torch.Generator
    epoch: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    best_value: Optional[float] = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    best_state: Optional[Dict[str, torch.Tensor]] = None

    @classmethod
    def fresh(cls, seed: int) -> "_LoopState":
        return cls(generator=torch.Generator().manual_seed(seed))

    @classmethod
    def restore(cls, payload, model, optimizer, scheduler, scaler) -> "_LoopState":
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload.get("grad_scaler"):
            scaler.load_state_dict(payload["grad_scaler"])
        torch.set_rng_state(payload["torch_rng"])
        generator = torch.Generator()
        generator.set_state(payload["permutation_rng"])
        loop = cls(
            generator=generator,
            epoch=payload["epoch"],
            history=list(payload["history"]),
            best_value=payload["best_value"],
            best_epoch=payload["best_epoch"],
            bad_epochs=payload["bad_epochs"],
            stopped_early=payload["stopped_early"],
            best_state=payload["best_state"],
        )
        log.info("resumed after epoch %d (best epoch %d)", loop.epoch, loop.best_epoch)
        return loop

    def payload(self, model, optimizer, scheduler, scaler) -> Dict[str, Any]:
        return {
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": self.epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "permutation_rng": self.generator.get_state(),
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "best_state": self.best_state,
        }

    def record(self, epoch, train_loss, val, optimizer, seconds, n_rows) -> None:
        row = {"epoch": epoch, "train_loss": train_loss, "seconds": seconds}
        row["rows_per_second"] = n_rows / seconds if seconds > 0 else float("nan")
        row["lr"] = optimizer.param_groups[0]["lr"]
        row.update(
            {f"val_{name}": value for name, value in val.items() if name != "rows"}
        )
        self.history.append(row)


def _stop_on_nonfinite(run_dir, epoch, bad_batch, last_good_epoch) -> None:
    """Keep the last good checkpoint and stop with a message naming epoch and batch."""
    raise ModelSphereError(
        f"training loss became NaN/inf in epoch {epoch}, batch {bad_batch + 1}; the "
        f"checkpoint of epoch {last_good_epoch} is kept in {run_dir}. "
        "Lower train.lr, keep "
        "train.grad_clip_norm on, or check the data for extreme values."
    )


def _metrics_summary(
    loop, final, monitor, mode, seconds, batch_size, device
) -> Dict[str, Any]:
    return {
        "status": "completed",
        "monitor": {"metric": f"val_{monitor}", "mode": mode},
        "best": {"epoch": loop.best_epoch, f"val_{monitor}": loop.best_value},
        "final": final,
        "training": {
            "epochs_run": loop.epoch,
            "stopped_early": loop.stopped_early,
            "best_epoch": loop.best_epoch,
            "batch_size": batch_size,
            "device": str(device.device),
            "amp_dtype": (
                str(device.amp_dtype).replace("torch.", "")
                if device.amp_enabled
                else None
            ),
            "seconds": seconds,
        },
        "history": loop.history,
    }


def _data_record(data: ProcessedData) -> Dict[str, Any]:
    """Which data trained this model: enough to check evaluation uses the same."""
    return {
        "processed_dir": str(data.directory.resolve()),
        "format": data.format,
        "raw_sha256": data.manifest["raw"]["sha256"],
        "config_sha256": data.manifest["config_sha256"],
        "split_sha256": {split: data.split_sha256(split) for split in SPLITS},
        "rows": data.manifest["rows"],
    }


def _short(metrics: Dict[str, float]) -> str:
    return ", ".join(
        f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("rows", "loss")
    )
