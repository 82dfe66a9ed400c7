"""evaluate.py: metrics and plots for a finished training run.

Everything is rebuilt from the run dir (its artifact and saved config), not from
today's defaults: the test split is the one the run was trained beside, checked by
the SHA-256 recorded at training time, and rebuilt from the run's own data config
if the processed folder has been removed or replaced.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from torchmetrics.functional import classification as C

from modelsphere.core.devices import select_device
from modelsphere.core.errors import ModelSphereError
from modelsphere.core.extras import optional_feature
from modelsphere.core.fileio import atomic_write_json, sha256_file
from modelsphere.core.progress import progress_bar
from modelsphere.core.runs import (
    CONFUSION_MATRIX_FILE,
    METRICS_FILE,
    RELIABILITY_FILE,
    RESIDUALS_FILE,
    resolve_run_dir,
)
from modelsphere.data.cleaning import clean_frame
from modelsphere.data.preprocessing import prepare_data
from modelsphere.data.splits import load_split
from modelsphere.data.table_io import nested_columns, read_table
from modelsphere.features.transform import encode_target
from modelsphere.inference.config import validate_evaluate_app
from modelsphere.inference.predictor import Predictor
from modelsphere.training.metrics import (
    CALIBRATION_BINS,
    DECISION_THRESHOLD,
    compute_metrics,
)

log = logging.getLogger(__name__)


def run_evaluation(cfg: Any, output_dir: str | Path) -> Dict[str, Any]:
    validate_evaluate_app(cfg)
    output_dir = Path(output_dir)
    run_dir = resolve_run_dir(cfg.run_dir, cfg.paths.outputs_dir)
    device = select_device(cfg.device.name, cfg.device.amp, cfg.device.amp_dtype)
    log.info("device: %s (%s)", device.device, device.reason)
    predictor = Predictor.from_run_dir(run_dir, device, cfg.batch_size)
    if cfg.input:
        predictor.check_flat(nested_columns(cfg.input), str(cfg.input))
        frame, source = read_table(cfg.input), {
            "input": str(cfg.input),
            "sha256": sha256_file(cfg.input),
        }
    else:
        frame, source = run_split(predictor, cfg.split), {"split": cfg.split}
    where = source.get("input", f"{cfg.split} split")
    scores, target = score_labelled(predictor, frame, where)
    metrics = compute_metrics(predictor.task, scores, target)
    report: Dict[str, Any] = {
        "run_dir": str(run_dir),
        **source,
        "task": predictor.task,
        "metrics": metrics,
    }
    if predictor.task != "regression":
        report["confusion_matrix"] = {
            "labels": [str(label) for label in predictor.classes],
            "matrix": _confusion(predictor.task, scores, target).tolist(),
        }
    atomic_write_json(output_dir / METRICS_FILE, report)
    if cfg.plot and optional_feature("plots", "plots"):
        _plots(predictor, scores, target, report, output_dir)
    log.info("%s", format_table(metrics, title=f"{where} of {run_dir}"))
    return report


def run_split(predictor: Predictor, split: str) -> pd.DataFrame:
    """The split this run was trained beside (rebuilt from its config if needed)."""
    artifact = predictor.artifact
    record = artifact.meta.get("data", {})
    # both sections in one config: a saved value may refer to the other, or to
    # the environment (`${oc.env:NAME}`: core/redaction.py)
    saved = OmegaConf.create(
        {"data": artifact.config["data"], "paths": artifact.config["paths"]}
    )
    processed = prepare_data(saved.data, saved.paths.data_dir)
    expected = record.get("split_sha256", {}).get(split)
    if expected != processed.split_sha256(split):
        raise ModelSphereError(
            f"the {split} split at {processed.split_path(split)} is not the one "
            f"{artifact.run_dir} was trained with (its SHA-256 differs): the raw data, "
            "the preprocessing code or library versions changed. Evaluate on a file "
            "with input=..., or retrain."
        )
    return load_split(processed, split)


def score_labelled(
    predictor: Predictor, frame: pd.DataFrame, where: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scores and targets (class indices, or values) for rows that carry a label."""
    schema = predictor.schema
    if schema.target not in frame:
        raise ModelSphereError(
            f"{where} has no target column {schema.target!r} to evaluate against"
        )
    predictor.check_columns(list(frame.columns), where, labelled=True)
    cleaned = clean_frame(frame, schema, where, strict=True, with_target=True)
    labelled = cleaned[cleaned[schema.target].notna()]
    if len(labelled) < len(cleaned):
        log.warning(
            "%s: %d row(s) without a label are left out",
            where,
            len(cleaned) - len(labelled),
        )
    if labelled.empty:
        raise ModelSphereError(f"{where} has no labelled rows")
    scores = _scores_with_progress(predictor, labelled, where)
    values = labelled[schema.target]
    if predictor.task == "regression":
        target = torch.tensor(values.to_numpy(dtype=np.float64), dtype=torch.float32)
    else:
        target = torch.from_numpy(encode_target(values, predictor.feature_state, where))
    return scores, target


def _scores_with_progress(
    predictor: Predictor, labelled: pd.DataFrame, where: str
) -> torch.Tensor:
    """The rows' scores, a batch of the predictor's size at a time (the batches
    its engine would have run anyway), with a progress bar on a terminal."""
    step, parts = predictor.batch_size, []
    with progress_bar(f"evaluating {where}", total=len(labelled)) as advance:
        for start in range(0, len(labelled), step):
            part = labelled.iloc[start : start + step]
            parts.append(predictor.scores(part, where))
            advance(len(part))
    return torch.cat(parts)


def _confusion(task: str, scores: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    if task == "binary":
        return C.binary_confusion_matrix(
            scores, target.long(), threshold=DECISION_THRESHOLD
        ).numpy()
    return C.multiclass_confusion_matrix(
        scores, target.long(), num_classes=scores.shape[1]
    ).numpy()


def _plots(predictor, scores, target, report, output_dir: Path) -> None:
    from modelsphere.training import plots  # needs the 'plots' extra

    if predictor.task == "regression":
        plots.residuals(scores.numpy(), target.numpy(), output_dir / RESIDUALS_FILE)
        return
    if predictor.task == "binary" and target.min() != target.max():
        plots.roc_pr_curves(scores, target, output_dir)
    plots.reliability_diagram(
        scores,
        target,
        report["metrics"]["ece"],
        CALIBRATION_BINS,
        output_dir / RELIABILITY_FILE,
    )
    matrix = np.asarray(report["confusion_matrix"]["matrix"])
    plots.confusion_matrix(
        matrix, predictor.classes, output_dir / CONFUSION_MATRIX_FILE
    )


def format_table(metrics: Dict[str, float], title: str) -> str:
    width = max(len(name) for name in metrics)
    lines = [title, f"{'metric'.ljust(width)}  value", f"{'-' * width}  ------"]
    for name, value in metrics.items():
        shown = str(value) if isinstance(value, int) else f"{value:.4f}"
        lines.append(f"{name.ljust(width)}  {shown}")
    return "\n".join(lines)
