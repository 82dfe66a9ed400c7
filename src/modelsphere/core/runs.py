"""Run directories: finding the latest training run, and pointing to it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import replace_symlink

log = logging.getLogger(__name__)

LATEST = "latest"
ARTIFACT_FILE = "model.json"


def hydra_output_dir() -> Path:
    """The run dir Hydra created for this invocation."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def update_latest(outputs_dir: str | Path, run_dir: str | Path) -> None:
    """Point outputs/latest at a finished run (atomically, relative link)."""
    outputs_dir = Path(outputs_dir)
    outputs_dir.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(Path(run_dir).resolve(), outputs_dir.resolve())
    replace_symlink(outputs_dir / LATEST, target)


def resolve_run_dir(run_dir: Optional[str], outputs_dir: str | Path) -> Path:
    """`run_dir` if given, else the latest training run; checked to hold a model."""
    if run_dir:
        path = Path(run_dir)
        if not path.is_dir():
            raise ModelSphereError(f"run_dir={run_dir!r}: no such directory")
    else:
        link = Path(outputs_dir) / LATEST
        if not link.exists():
            raise ModelSphereError(
                f"no training run found ({link} does not exist): run `python train.py` "
                "first or pass run_dir=outputs/train/<run>"
            )
        path = link.resolve()
        log.info("using the latest training run: %s", path)
    if not (path / ARTIFACT_FILE).is_file():
        raise ModelSphereError(
            f"{path} holds no model artifact ({ARTIFACT_FILE} is missing): is it a "
            "finished training run?"
        )
    return path
