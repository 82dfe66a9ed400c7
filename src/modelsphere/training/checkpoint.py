"""Resume checkpoints: everything needed to continue a run exactly.

A checkpoint is a dict of tensors and plain Python values written with
`torch.save` and read back with `torch.load(weights_only=True)`, which refuses
anything but tensors and primitive containers: no code runs when loading. It is
written atomically after every epoch, and mid-epoch when a run is interrupted.

`LoopState` is the training loop's own state: epoch, history, early stopping, the
best weights so far, the permutation RNG and, after an interruption, the epoch in
progress.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import atomic_path
from modelsphere.core.runs import CHECKPOINT_FILE
from modelsphere.training.epochs import EpochProgress

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


def save_checkpoint(run_dir: str | Path, payload: Dict[str, Any]) -> Path:
    path = Path(run_dir) / CHECKPOINT_FILE
    with atomic_path(path) as tmp:
        torch.save({"version": CHECKPOINT_VERSION, **payload}, tmp)
    return path


def load_checkpoint(run_dir: str | Path) -> Dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise ModelSphereError(f"no checkpoint to resume from: {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSphereError(f"{path} is not a readable checkpoint: {first}") from exc
    if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
        raise ModelSphereError(
            f"{path} is not a modelsphere checkpoint (version {CHECKPOINT_VERSION})"
        )
    return payload


@dataclass
class LoopState:
    generator: torch.Generator
    epoch: int = 0  # the last completed epoch
    history: List[Dict[str, Any]] = field(default_factory=list)
    best_value: Optional[float] = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    best_state: Optional[Dict[str, torch.Tensor]] = None
    partial: Optional[EpochProgress] = None  # the epoch in progress, if interrupted

    @classmethod
    def fresh(cls, seed: int) -> "LoopState":
        return cls(generator=torch.Generator().manual_seed(seed))

    @classmethod
    def restore(cls, payload, model, optimizer, scheduler, scaler) -> "LoopState":
        """Put model, optimizer, scheduler, scaler and RNGs back as they were."""
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload.get("grad_scaler"):
            scaler.load_state_dict(payload["grad_scaler"])
        torch.set_rng_state(payload["torch_rng"])
        if payload.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        generator = torch.Generator()
        generator.set_state(payload["permutation_rng"])
        partial = payload.get("partial")
        device = next(model.parameters()).device
        loop = cls(
            generator=generator,
            epoch=payload["epoch"],
            history=list(payload["history"]),
            best_value=payload["best_value"],
            best_epoch=payload["best_epoch"],
            bad_epochs=payload["bad_epochs"],
            stopped_early=payload["stopped_early"],
            best_state=payload["best_state"],
            partial=EpochProgress.from_payload(partial, device) if partial else None,
        )
        where = f"after epoch {loop.epoch}"
        if loop.partial is not None:
            where = (
                f"in epoch {loop.partial.epoch} at batch {loop.partial.next_step + 1}"
            )
        log.info("resuming %s (best epoch so far: %d)", where, loop.best_epoch)
        return loop

    def payload(self, model, optimizer, scheduler, scaler) -> Dict[str, Any]:
        cuda_rng = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda_rng = torch.cuda.get_rng_state_all()
        return {
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": self.epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda_rng,
            "permutation_rng": self.generator.get_state(),
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "best_state": self.best_state,
            "partial": self.partial.payload() if self.partial is not None else None,
        }

    def record(
        self, epoch, train_loss, val, optimizer, seconds, rows_per_process
    ) -> None:
        """One epoch's history row; `rows_per_process` lists the training rows
        each process's forward saw this epoch, in rank order."""
        n_rows = sum(rows_per_process)
        row = {"epoch": epoch, "train_loss": train_loss, "seconds": seconds}
        row["rows_per_second"] = n_rows / seconds if seconds > 0 else float("nan")
        row["rows_per_process"] = list(rows_per_process)
        row["lr"] = optimizer.param_groups[0]["lr"]
        row.update(
            {f"val_{name}": value for name, value in val.items() if name != "rows"}
        )
        self.history.append(row)
