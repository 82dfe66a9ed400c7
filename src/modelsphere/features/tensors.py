"""A split as model inputs: the transformed numeric and categorical arrays and the
encoded target, as tensors on the training device, built chunk by chunk from the
split file."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from modelsphere.data.splits import ProcessedData, iter_split_frames
from modelsphere.features.transform import encode_target, transform_features


@dataclass
class SplitTensors:
    """One split, transformed and on the device."""

    numeric: torch.Tensor
    categorical: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return self.target.shape[0]


def split_tensors(
    data: ProcessedData, split: str, feature_state, device: torch.device
) -> SplitTensors:
    """A split's model inputs and targets, transformed chunk by chunk."""
    numeric, categorical, target = [], [], []
    target_name = feature_state["target"]["name"]
    for frame in iter_split_frames(data, split):
        arrays = transform_features(frame, feature_state)
        numeric.append(arrays.numeric)
        categorical.append(arrays.categorical)
        target.append(
            encode_target(frame[target_name], feature_state, f"{split} split")
        )
    return SplitTensors(
        *(
            torch.from_numpy(_concatenate(parts)).to(device)
            for parts in (numeric, categorical, target)
        )
    )


def _concatenate(parts):
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
