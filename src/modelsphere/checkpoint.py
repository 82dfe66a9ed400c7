"""Resume checkpoints: everything needed to continue a run exactly.

A checkpoint is a dict of tensors and plain Python values written with
`torch.save` and read back with `torch.load(weights_only=True)`, which refuses
anything but tensors and primitive containers: no code runs when loading.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict

import torch

from .errors import ModelSphereError
from .fileio import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"
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
