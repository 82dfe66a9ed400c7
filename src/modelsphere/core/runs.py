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

# The files of a run dir, named here only: every module that writes or reads one
# imports its name from this module.
CONFIG_FILE = "config.yaml"  # the composed config, resolved
METRICS_FILE = "metrics.json"  # training, evaluation and a sweep job's metrics
CURVE_FILE = "training_curve.png"
CHECKPOINT_FILE = "checkpoint.pt"  # resume state, rewritten every epoch
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"  # spec, feature state, schema, config, provenance
ONNX_FILE = "model.onnx"  # the cached ONNX export, stamped with the weights' hash
# export.py's default output: one graph from raw columns to scores
RAW_GRAPH_FILE = "model_raw.onnx"
PREDICTION_SUMMARY_FILE = "prediction.json"
JOB_STATUS_FILE = "job_status.json"  # a sweep job's outcome
TRACKING_FILE = "tracking.json"  # the run trackers' ids: a resumed run continues
ROC_CURVE_FILE = "roc_curve.png"
PR_CURVE_FILE = "pr_curve.png"
RELIABILITY_FILE = "reliability.png"  # calibration: predicted vs observed
RESIDUALS_FILE = "residuals.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"


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
    if not (path / META_FILE).is_file():
        raise ModelSphereError(
            f"{path} holds no model artifact ({META_FILE} is missing): is it a "
            "finished training run?"
        )
    return path
