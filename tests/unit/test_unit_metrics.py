"""Metrics on hand-made examples; the monitored metric and improvement rule."""

from __future__ import annotations

import math

import pytest
import torch

from modelsphere.core.errors import ModelSphereError
from modelsphere.training.metrics import (
    compute_metrics,
    is_improvement,
    resolve_monitor,
)


def test_binary_perfect_predictions():
    scores = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.7])
    target = torch.tensor([0, 1, 0, 1, 1])
    metrics = compute_metrics("binary", scores, target)
    for name in ("roc_auc", "pr_auc", "accuracy", "f1", "precision", "recall"):
        assert metrics[name] == pytest.approx(1.0), name
    expected = -sum(math.log(p) for p in (0.9, 0.9, 0.8, 0.8, 0.7)) / 5
    assert metrics["log_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["rows"] == 5


def test_binary_hand_computed_values():
    scores = torch.tensor([0.2, 0.6, 0.4, 0.9])
    target = torch.tensor([0, 0, 1, 1])
    metrics = compute_metrics("binary", scores, target)
    assert metrics["roc_auc"] == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert metrics["accuracy"] == pytest.approx(0.5)  # threshold 0.5: [0,1,0,1]
    assert metrics["precision"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(0.5)
    assert metrics["f1"] == pytest.approx(0.5)
    expected = -(math.log(0.8) + math.log(0.4) + math.log(0.4) + math.log(0.9)) / 4
    assert metrics["log_loss"] == pytest.approx(expected, rel=1e-5)


def test_binary_single_class_has_nan_auc_and_finite_log_loss():
    metrics = compute_metrics("binary", torch.tensor([0.3, 0.8]), torch.tensor([1, 1]))
    assert math.isnan(metrics["roc_auc"])
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert math.isfinite(metrics["log_loss"])


def test_binary_log_loss_is_clamped_for_certain_mistakes():
    metrics = compute_metrics("binary", torch.tensor([0.0, 1.0]), torch.tensor([1, 0]))
    assert math.isfinite(metrics["log_loss"])
    assert metrics["log_loss"] > 10


def test_multiclass_perfect_and_hand_computed():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    target = torch.tensor([0, 1, 2])
    metrics = compute_metrics("multiclass", probs, target)
    assert metrics["accuracy"] == pytest.approx(1.0)
    assert metrics["macro_f1"] == pytest.approx(1.0)
    assert metrics["roc_auc"] == pytest.approx(1.0)
    assert metrics["log_loss"] == pytest.approx(-math.log(0.8), rel=1e-5)
    wrong = compute_metrics("multiclass", probs, torch.tensor([0, 2, 1]))
    assert wrong["accuracy"] == pytest.approx(1 / 3)
    assert wrong["log_loss"] == pytest.approx(
        -(math.log(0.8) + 2 * math.log(0.1)) / 3, rel=1e-5
    )
    assert wrong["rows"] == 3


def test_regression_perfect_and_hand_computed():
    values = torch.tensor([1.0, 2.0, 5.0])
    perfect = compute_metrics("regression", values, values)
    assert perfect["rmse"] == 0.0
    assert perfect["mae"] == 0.0
    assert perfect["r2"] == pytest.approx(1.0)
    metrics = compute_metrics("regression", torch.tensor([1.0, 2.0, 3.0]), values)
    assert metrics["rmse"] == pytest.approx(math.sqrt(4 / 3), rel=1e-6)
    assert metrics["mae"] == pytest.approx(2 / 3, rel=1e-6)
    assert metrics["r2"] == pytest.approx(1 - 4 / (78 / 9), rel=1e-5)


def test_regression_with_one_row_has_nan_r2():
    metrics = compute_metrics("regression", torch.tensor([1.0]), torch.tensor([3.0]))
    assert metrics["rmse"] == pytest.approx(2.0)
    assert math.isnan(metrics["r2"])


def test_unknown_task_is_an_error():
    with pytest.raises(ModelSphereError, match="unknown task 'ranking'"):
        compute_metrics("ranking", torch.tensor([1.0]), torch.tensor([1.0]))


@pytest.mark.parametrize(
    "task, expected",
    [
        ("binary", ("roc_auc", "max")),
        ("multiclass", ("log_loss", "min")),
        ("regression", ("rmse", "min")),
    ],
)
def test_resolve_monitor_defaults(task, expected):
    assert resolve_monitor(task, "auto") == expected


@pytest.mark.parametrize(
    "task, monitor, mode",
    [
        ("binary", "f1", "max"),
        ("binary", "log_loss", "min"),
        ("binary", "loss", "min"),
        ("multiclass", "macro_f1", "max"),
        ("regression", "r2", "max"),
        ("regression", "mae", "min"),
        ("binary", "brier", "min"),
        ("multiclass", "ece", "min"),
    ],
)
def test_resolve_monitor_explicit(task, monitor, mode):
    assert resolve_monitor(task, monitor) == (monitor, mode)


@pytest.mark.parametrize(
    "task, monitor", [("regression", "roc_auc"), ("binary", "rmse"), ("binary", "auc")]
)
def test_resolve_monitor_invalid(task, monitor):
    with pytest.raises(ModelSphereError) as err:
        resolve_monitor(task, monitor)
    message = str(err.value)
    assert f"train.monitor={monitor!r}" in message
    assert f"not a {task} metric" in message


def test_is_improvement():
    assert is_improvement(0.5, None, "max", 0.0)
    assert not is_improvement(float("nan"), None, "max", 0.0)
    assert is_improvement(0.8, 0.7, "max", 0.0)
    assert not is_improvement(0.7, 0.7, "max", 0.0)
    assert not is_improvement(0.75, 0.7, "max", 0.1)
    assert is_improvement(0.81, 0.7, "max", 0.1)
    assert is_improvement(0.2, 0.3, "min", 0.0)
    assert not is_improvement(0.3, 0.2, "min", 0.0)
    assert not is_improvement(0.25, 0.3, "min", 0.1)
    assert not is_improvement(float("nan"), 0.3, "min", 0.0)


# ----------------------------------------------------------------------------
# Calibration: Brier score, expected calibration error, the reliability table


def test_binary_calibration_hand_computed():
    # P(positive) 0.8 for a positive and 0.2 for a negative: each off by 0.2.
    metrics = compute_metrics("binary", torch.tensor([0.8, 0.2]), torch.tensor([1, 0]))
    assert metrics["brier"] == pytest.approx(0.04)
    assert metrics["ece"] == pytest.approx(0.2)  # two bins, each |0.8 - 1| or |0.2 - 0|


def test_binary_calibration_of_a_calibrated_bin_is_zero():
    # four rows at 0.75, three of them positive: observed rate = predicted
    scores, target = torch.full((4,), 0.75), torch.tensor([1, 1, 1, 0])
    metrics = compute_metrics("binary", scores, target)
    assert metrics["ece"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["brier"] == pytest.approx((3 * 0.25**2 + 0.75**2) / 4)


def test_multiclass_calibration_hand_computed():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    metrics = compute_metrics("multiclass", probs, torch.tensor([0, 2]))
    assert metrics["brier"] == pytest.approx(
        ((0.09 + 0.04 + 0.01) + (0.01 + 0.36 + 0.49)) / 2
    )
    # top-class confidence 0.7 (right) and 0.6 (wrong): |0.7 - 1| and |0.6 - 0|
    assert metrics["ece"] == pytest.approx((0.3 + 0.6) / 2)


def test_the_reliability_table_matches_the_calibration_error(tmp_path):
    from modelsphere.training.metrics import CALIBRATION_BINS
    from modelsphere.training.plots import calibration_bins, reliability_diagram

    generator = torch.Generator().manual_seed(0)
    rows = 2000
    scores = torch.rand(rows, generator=generator)
    # calibrated on average: each bin's error has a random sign, so binning
    # the rows any other way would give another error
    target = (torch.rand(rows, generator=generator) < scores).long()
    table = calibration_bins(scores, target, CALIBRATION_BINS)
    assert len(table["count"]) == CALIBRATION_BINS and table["count"].sum() == rows
    gaps = abs(table["confidence"] - table["observed"])
    ece = float((table["count"] * gaps).sum() / rows)
    metrics = compute_metrics("binary", scores, target)
    assert ece == pytest.approx(metrics["ece"], abs=1e-5)
    path = reliability_diagram(
        scores, target, ece, CALIBRATION_BINS, tmp_path / "r.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
