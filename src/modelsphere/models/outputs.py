"""From a model to scores: the batched forward pass and what its outputs mean.

A model returns logits (binary, multiclass) or standardised values (regression).
Training's validation, evaluation, prediction and the API all turn them into
scores here: P(positive) for binary, [rows, classes] probabilities for
multiclass, values on the target's own scale for regression (features/target.py).
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from modelsphere.core.devices import DeviceChoice, autocast
from modelsphere.features.target import predicted_values

# The predictor's output columns: the label (or the value), one per class.
PREDICTION_COLUMN = "prediction"
PROBABILITY_SUFFIX = "_probability"


@torch.inference_mode()
def predict_outputs(
    model: nn.Module,
    numeric: torch.Tensor,
    categorical: torch.Tensor,
    batch_size: int,
    device: DeviceChoice,
) -> torch.Tensor:
    """Raw model outputs (logits or standardised values), float32, in batches."""
    model.eval()
    chunks = []
    for start in range(0, numeric.shape[0], batch_size):
        with autocast(device):
            out = model(
                numeric[start : start + batch_size],
                categorical[start : start + batch_size],
            )
        chunks.append(out.float())
    if not chunks:
        return torch.zeros((0, model.spec.n_outputs), device=numeric.device)
    return torch.cat(chunks)


def outputs_to_scores(
    outputs: torch.Tensor, task: str, feature_state: Dict[str, Any]
) -> torch.Tensor:
    """Probabilities (P(positive) for binary, [n, k] for multiclass) or values."""
    if task == "binary":
        return torch.sigmoid(outputs[:, 0])
    if task == "multiclass":
        return torch.softmax(outputs, dim=1)
    return predicted_values(outputs[:, 0], feature_state["target"])
