"""Task metrics via torchmetrics, and the monitored metric for early stopping.

Scores are probabilities for classification ([n] for binary: P(positive class);
[n, k] for multiclass) and values in the target's own units for regression.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torchmetrics.functional import classification as C
from torchmetrics.functional import regression as R

from modelsphere.core.errors import ModelSphereError

PROBABILITY_EPS = 1e-7
MAXIMISED = {
    "roc_auc",
    "pr_auc",
    "accuracy",
    "f1",
    "macro_f1",
    "precision",
    "recall",
    "r2",
}
MINIMISED = {"log_loss", "brier", "ece", "rmse", "mae", "loss"}
DEFAULT_MONITOR = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}
DECISION_THRESHOLD = 0.5
# equal-width confidence bins of the expected calibration error (torchmetrics'
# default) and of the reliability diagram
CALIBRATION_BINS = 15


def _log_loss_binary(probs: torch.Tensor, target: torch.Tensor) -> float:
    probs = probs.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    return float(F.binary_cross_entropy(probs, target.float()))


def _log_loss_multiclass(probs: torch.Tensor, target: torch.Tensor) -> float:
    return float(F.nll_loss(probs.clamp_min(PROBABILITY_EPS).log(), target))


def brier_score(probs: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error of the probabilities against the one-hot outcome (for
    binary, of P(positive) against 0/1): 0 is perfect."""
    if probs.dim() == 1:
        return float(((probs - target.float()) ** 2).mean())
    onehot = F.one_hot(target.long(), probs.shape[1]).float()
    return float(((probs - onehot) ** 2).sum(dim=1).mean())


def calibration_error(probs: torch.Tensor, target: torch.Tensor) -> float:
    """Expected calibration error (L1, CALIBRATION_BINS equal-width bins): for
    binary, of P(positive) against the observed rate; for multiclass, of the top
    class's probability against the accuracy."""
    if probs.dim() == 1:
        return float(
            C.binary_calibration_error(
                probs, target.long(), n_bins=CALIBRATION_BINS, norm="l1"
            )
        )
    return float(
        C.multiclass_calibration_error(
            probs,
            target.long(),
            num_classes=probs.shape[1],
            n_bins=CALIBRATION_BINS,
            norm="l1",
        )
    )


def compute_metrics(
    task: str, scores: torch.Tensor, target: torch.Tensor
) -> Dict[str, float]:
    """All metrics of a task; `target` holds class indices or regression values."""
    scores, target = scores.detach().float().cpu(), target.detach().cpu()
    if task == "binary":
        target = target.long()
        # Ranking metrics are undefined (NaN) when only one class is present.
        single_class = bool(target.min() == target.max())
        nan = float("nan")
        metrics = {
            "roc_auc": nan if single_class else float(C.binary_auroc(scores, target)),
            "pr_auc": (
                nan
                if single_class
                else float(C.binary_average_precision(scores, target))
            ),
            "accuracy": float(
                C.binary_accuracy(scores, target, threshold=DECISION_THRESHOLD)
            ),
            "f1": float(
                C.binary_f1_score(scores, target, threshold=DECISION_THRESHOLD)
            ),
            "precision": float(
                C.binary_precision(scores, target, threshold=DECISION_THRESHOLD)
            ),
            "recall": float(
                C.binary_recall(scores, target, threshold=DECISION_THRESHOLD)
            ),
            "log_loss": _log_loss_binary(scores, target),
            "brier": brier_score(scores, target),
            "ece": calibration_error(scores, target),
        }
    elif task == "multiclass":
        target = target.long()
        k = scores.shape[1]
        metrics = {
            "accuracy": float(
                C.multiclass_accuracy(scores, target, num_classes=k, average="micro")
            ),
            "macro_f1": float(
                C.multiclass_f1_score(scores, target, num_classes=k, average="macro")
            ),
            "roc_auc": float(
                C.multiclass_auroc(scores, target, num_classes=k, average="macro")
            ),
            "log_loss": _log_loss_multiclass(scores, target),
            "brier": brier_score(scores, target),
            "ece": calibration_error(scores, target),
        }
    elif task == "regression":
        target = target.float()
        metrics = {
            "rmse": float(R.mean_squared_error(scores, target, squared=False)),
            "mae": float(R.mean_absolute_error(scores, target)),
            "r2": (
                float(R.r2_score(scores, target)) if len(target) > 1 else float("nan")
            ),
        }
    else:
        raise ModelSphereError(f"unknown task {task!r}")
    metrics["rows"] = int(len(target))
    return metrics


def resolve_monitor(task: str, monitor: str) -> Tuple[str, str]:
    """(metric name, 'max' or 'min') for early stopping and model selection."""
    name = DEFAULT_MONITOR[task] if monitor == "auto" else monitor
    valid = {
        "binary": [
            "roc_auc",
            "pr_auc",
            "accuracy",
            "f1",
            "precision",
            "recall",
            "log_loss",
            "brier",
            "ece",
            "loss",
        ],
        "multiclass": [
            "accuracy",
            "macro_f1",
            "roc_auc",
            "log_loss",
            "brier",
            "ece",
            "loss",
        ],
        "regression": ["rmse", "mae", "r2", "loss"],
    }[task]
    if name not in valid:
        raise ModelSphereError(
            f"train.monitor={monitor!r} is not a {task} metric: "
            f"choose auto or one of {valid}"
        )
    return name, "max" if name in MAXIMISED else "min"


def is_improvement(
    value: float, best: float | None, mode: str, min_delta: float
) -> bool:
    if best is None:
        return value == value  # not NaN
    return value > best + min_delta if mode == "max" else value < best - min_delta
