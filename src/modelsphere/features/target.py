"""The regression target's scale: what the network is trained to predict, and
how its outputs become values in the target's own units.

The network always learns a standardised target, z = (t(y) - mean) / std, where
t is the target transform chosen on the train split (`fit.py`):

- `none`: t(y) = y. The MSE the network minimises is the RMSE users measure.
- `log1p`: t(y) = log(1 + y), for a non-negative, right-skewed target such as a
  price, a wage or a count. Errors then count relative to the value's size, so a
  few very large values no longer dominate the loss and the network sees a target
  close to symmetric.
- `auto` picks `log1p` when the train target is >= 0, its skewness is above
  `model.features.target_log_skew` and log1p brings the skewness closer to zero;
  `none` otherwise (and always for a target with negative values).

`none` is the default: measured on every regression set of the quality suites
(benchmarks/results/quality_regression.md), the log scale won clearly on one
skewed target and lost slightly on most of the others, in the target's units.

Back on the original scale, exp(mean of log values) is the geometric mean, which
lies below the mean: a log-trained model predicts too low on average, by a factor
of about exp(sigma^2 / 2) for residuals of spread sigma. Prediction therefore
multiplies by Duan's smearing factor, S = mean(exp(residual)) over the validation
split's log-scale residuals (Duan, 1983, JASA 78:605), fitted once after training
and saved with the state: y_hat = S * exp(z_hat) - 1. Training's own validation
monitor uses S = 1 (the factor does not exist yet).

Everything here is plain data in the feature state's "target" entry, so predict,
evaluate, the API and the ONNX engine (whose graph ends at the network's output)
all invert it in `outputs_to_scores` the same way. A state saved before the
transform existed has no "transform" key and reads as `none`.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np
import torch

from modelsphere.core.errors import ModelSphereError

TARGET_TRANSFORMS = ("auto", "none", "log1p")  # model.features.target_transform
NO_SMEARING = 1.0


def skewness(values: np.ndarray) -> float:
    """Sample skewness (Fisher-Pearson, biased): E[(x - mean)^3] / std^3."""
    centred = values - values.mean()
    std = math.sqrt(float(np.mean(centred * centred)))
    if std == 0.0:
        return 0.0
    return float(np.mean(centred**3)) / std**3


def choose_transform(
    sample: np.ndarray, requested: str, log_skew: float, name: str
) -> str:
    """The transform for a target whose train values are `sample` (present only)."""
    if requested == "none":
        return "none"
    minimum = float(sample.min())
    if requested == "log1p":
        if minimum < 0:
            raise ModelSphereError(
                f"model.features.target_transform=log1p needs a target >= 0, but "
                f"target {name!r} has {minimum:g} in the train split; use "
                "target_transform=none (or auto, which chooses it for such targets)"
            )
        return "log1p"
    if minimum < 0:
        return "none"
    raw = skewness(sample)
    logged = skewness(np.log1p(sample))
    return "log1p" if raw > log_skew and abs(logged) < abs(raw) else "none"


def transform_of(target: Dict[str, Any]) -> str:
    """The target's transform; a state saved before transforms existed: none."""
    return target.get("transform", "none")


def transformed(values: np.ndarray, target: Dict[str, Any], where: str) -> np.ndarray:
    """t(y) for target values (float64, NaN kept)."""
    if transform_of(target) == "none":
        return values
    below = values <= -1
    if below.any():
        first = float(values[below][0])
        raise ModelSphereError(
            f"{where}: target {target['name']!r} holds {int(below.sum())} value(s) "
            f"<= -1, e.g. {first:g}, outside the log1p transform this model was "
            "trained with (its train split was >= 0)"
        )
    return np.log1p(values)


def target_values(encoded: torch.Tensor, target: Dict[str, Any]) -> torch.Tensor:
    """The exact inverse of the encoding: standardised targets back to values."""
    values = _unscaled(encoded, target)
    if transform_of(target) == "log1p":
        values = torch.expm1(values)
    return values.to(encoded.dtype)


def predicted_values(outputs: torch.Tensor, target: Dict[str, Any]) -> torch.Tensor:
    """The network's standardised outputs as predictions in the target's units:
    for a log1p target, smearing factor x exp(log prediction) - 1."""
    if transform_of(target) == "none":
        return target_values(outputs, target)
    smearing = target.get("smearing", NO_SMEARING)
    return (torch.exp(_log_prediction(outputs, target)) * smearing - 1.0).to(
        outputs.dtype
    )


def _log_prediction(outputs: torch.Tensor, target: Dict[str, Any]) -> torch.Tensor:
    """log(1 + y) predicted, held to the train split's range: a ReLU network
    extrapolates linearly in log units, which is exponentially in the target's,
    so an unusual row could otherwise be predicted at several times the largest
    value ever seen (a tree stops at that range too)."""
    return _unscaled(outputs, target).clamp(target["low"], target["high"])


def smearing_factor(
    outputs: torch.Tensor, encoded: torch.Tensor, target: Dict[str, Any]
) -> float:
    """Duan's smearing factor from a held-out split's outputs and encoded targets:
    mean(exp(log residual)); 1 where the target is not log-transformed."""
    if transform_of(target) != "log1p" or encoded.numel() == 0:
        return NO_SMEARING
    logged = _unscaled(encoded, target)
    predicted = _log_prediction(outputs.reshape(encoded.shape), target)
    return float(torch.exp(logged - predicted).mean())


def _unscaled(z: torch.Tensor, target: Dict[str, Any]) -> torch.Tensor:
    """Standardised values back to the target's training scale t(y), float64."""
    return z.double() * target["std"] + target["mean"]
