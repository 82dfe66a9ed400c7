"""A split as model inputs: the transformed numeric and categorical arrays and the
encoded target, as tensors on the training device."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SplitTensors:
    """One split, transformed and on the device."""

    numeric: torch.Tensor
    categorical: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return self.target.shape[0]
