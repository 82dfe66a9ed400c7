"""PNG plots for runs: training curves, ROC/PR curves, reliability (calibration),
confusion matrix, residuals.

Each figure is written atomically (temp file + rename) with the non-interactive
Agg backend, so plotting works on headless machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from torchmetrics.functional import classification as C  # noqa: E402

from modelsphere.core.fileio import atomic_path  # noqa: E402
from modelsphere.core.runs import PR_CURVE_FILE, ROC_CURVE_FILE  # noqa: E402

FIGURE_DPI = 110


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def training_curve(
    history: List[Dict[str, Any]], monitor: str, best_epoch: int, path: Path
) -> Path:
    """Losses and the monitored val metric per epoch; the restored epoch marked."""
    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    left.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    left.plot(epochs, [row["val_loss"] for row in history], label="val loss")
    left.set_ylabel("loss")
    right.plot(epochs, [row[f"val_{monitor}"] for row in history], color="tab:green")
    right.set_ylabel(f"val {monitor}")
    for axis in (left, right):
        axis.axvline(best_epoch, linestyle=":", color="grey", label="best epoch")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend()
    figure.suptitle(f"Training curve (weights restored from epoch {best_epoch})")
    return _save(figure, path)


def roc_pr_curves(
    probs: torch.Tensor, target: torch.Tensor, out_dir: Path
) -> List[Path]:
    target = target.long()
    fpr, tpr, _ = C.binary_roc(probs, target)
    precision, recall, _ = C.binary_precision_recall_curve(probs, target)
    paths = []
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot(fpr.numpy(), tpr.numpy())
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title("ROC curve")
    paths.append(_save(figure, out_dir / ROC_CURVE_FILE))
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot(recall.numpy(), precision.numpy())
    axis.axhline(float(target.float().mean()), linestyle="--", color="grey")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_title("Precision-recall curve")
    paths.append(_save(figure, out_dir / PR_CURVE_FILE))
    return paths


def calibration_bins(
    probs: torch.Tensor, target: torch.Tensor, bins: int
) -> Dict[str, np.ndarray]:
    """Per equal-width bin of confidence: the mean confidence, the observed rate
    and the row count (empty bins are left out). Binary: P(positive) against the
    positive rate; multiclass: the top class's probability against the accuracy
    (the quantities the expected calibration error compares)."""
    if probs.dim() == 1:
        confidence, hit = probs.double(), target.double()
    else:
        top, predicted = probs.max(dim=1)
        confidence, hit = top.double(), (predicted == target.long()).double()
    index = torch.clamp((confidence * bins).long(), max=bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    mean_confidence = torch.bincount(index, weights=confidence, minlength=bins)
    observed = torch.bincount(index, weights=hit, minlength=bins)
    kept = count > 0
    return {
        "confidence": (mean_confidence[kept] / count[kept]).numpy(),
        "observed": (observed[kept] / count[kept]).numpy(),
        "count": count[kept].numpy(),
    }


def reliability_diagram(
    probs: torch.Tensor, target: torch.Tensor, ece: float, bins: int, path: Path
) -> Path:
    """Observed rate against mean predicted probability per bin, with the rows
    per bin below: a calibrated model's points lie on the diagonal."""
    table = calibration_bins(probs, target, bins)
    binary = probs.dim() == 1
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), height_ratios=(3, 1), sharex=True
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="calibrated")
    top.plot(table["confidence"], table["observed"], marker="o", label="model")
    top.set_ylabel("observed positive rate" if binary else "accuracy")
    top.set_title(f"Reliability (ECE {ece:.4f}, {bins} bins)")
    top.legend(loc="upper left")
    bottom.bar(table["confidence"], table["count"], width=1.0 / bins, color="tab:blue")
    bottom.set_xlabel("predicted probability" if binary else "top-class probability")
    bottom.set_ylabel("rows")
    return _save(figure, path)


def confusion_matrix(matrix: np.ndarray, labels: Sequence[Any], path: Path) -> Path:
    size = max(4.0, 0.6 * len(labels) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    ticks = range(len(labels))
    axis.set_xticks(ticks, [str(label) for label in labels], rotation=45, ha="right")
    axis.set_yticks(ticks, [str(label) for label in labels])
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in ticks:
        for j in ticks:
            color = "white" if matrix[i, j] > threshold else "black"
            axis.text(
                j, i, str(int(matrix[i, j])), ha="center", va="center", color=color
            )
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title("Confusion matrix")
    return _save(figure, path)


def residuals(predicted: np.ndarray, actual: np.ndarray, path: Path) -> Path:
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.scatter(actual, predicted, s=4, alpha=0.4)
    low, high = float(min(actual.min(), predicted.min())), float(
        max(actual.max(), predicted.max())
    )
    left.plot([low, high], [low, high], linestyle="--", color="grey")
    left.set_xlabel("actual")
    left.set_ylabel("predicted")
    left.set_title("Predicted vs actual")
    right.hist(predicted - actual, bins=50)
    right.set_xlabel("residual (predicted - actual)")
    right.set_title("Residuals")
    return _save(figure, path)
