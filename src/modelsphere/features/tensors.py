"""A split as model inputs: the transformed numeric and categorical arrays and the
encoded target, as tensors on the training device, built chunk by chunk from the
split file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from modelsphere.core.errors import ModelSphereError
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
    data: ProcessedData,
    split: str,
    feature_state,
    device: torch.device,
    rows: Optional[Sequence[int]] = None,
) -> SplitTensors:
    """A split's model inputs and targets, transformed chunk by chunk; with
    `rows`, only those rows (positions in the split, in the order given): the
    other rows are read a chunk at a time and never transformed or kept."""
    numeric, categorical, target = [], [], []
    target_name = feature_state["target"]["name"]
    wanted = None if rows is None else np.asarray(rows, dtype=np.int64)
    ascending = wanted if wanted is None else np.sort(wanted)
    offset = 0
    for frame in iter_split_frames(data, split):
        if ascending is not None:
            start, offset = offset, offset + len(frame)
            lo, hi = np.searchsorted(ascending, [start, offset])
            frame = frame.iloc[ascending[lo:hi] - start]
        arrays = transform_features(frame, feature_state)
        numeric.append(arrays.numeric)
        categorical.append(arrays.categorical)
        target.append(
            encode_target(frame[target_name], feature_state, f"{split} split")
        )
    parts = [_concatenate(p) for p in (numeric, categorical, target)]
    if wanted is not None:
        if len(ascending) and (ascending[-1] >= offset or ascending[0] < 0):
            raise ModelSphereError(
                f"rows {int(ascending[0])}..{int(ascending[-1])} asked of the "
                f"{split} split, which has {offset} rows"
            )
        if not np.array_equal(ascending, wanted):  # back to the order asked for
            where = np.searchsorted(ascending, wanted)
            parts = [part[where] for part in parts]
    return SplitTensors(*(torch.from_numpy(part).to(device) for part in parts))


def _concatenate(parts):
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
