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

    def parts(self):
        return self.numeric, self.categorical, self.target


def frame_tensors(frame, feature_state, device: torch.device, where: str):
    """Model inputs and targets of the rows of one frame of a split."""
    arrays = transform_features(frame, feature_state)
    target = encode_target(frame[feature_state["target"]["name"]], feature_state, where)
    parts = (arrays.numeric, arrays.categorical, target)
    return SplitTensors(*(torch.from_numpy(part).to(device) for part in parts))


def split_tensors(
    data: ProcessedData,
    split: str,
    feature_state,
    device: torch.device,
    rows: Optional[Sequence[int]] = None,
) -> SplitTensors:
    """A split's model inputs and targets, transformed chunk by chunk into arrays
    of their final size (no second copy while they are put together); with
    `rows`, only those rows (positions in the split, in the order given): the
    other rows are read a chunk at a time and never transformed or kept."""
    n_rows = data.split_rows(split)
    target_name = feature_state["target"]["name"]
    if rows is None:
        ascending = order = None
    else:
        wanted = np.asarray(rows, dtype=np.int64)
        order = np.argsort(wanted, kind="stable")  # output slot of each, sorted
        ascending = wanted[order]
        if len(wanted) and (ascending[0] < 0 or ascending[-1] >= n_rows):
            raise ModelSphereError(
                f"rows {int(ascending[0])}..{int(ascending[-1])} asked of the "
                f"{split} split, which has {n_rows} rows"
            )
    size = n_rows if rows is None else len(ascending)
    filled = offset = 0
    out = None
    for frame in iter_split_frames(data, split):
        start, offset = offset, offset + len(frame)
        if ascending is not None:
            lo, hi = np.searchsorted(ascending, [start, offset])
            frame = frame.iloc[ascending[lo:hi] - start]
            slots = order[lo:hi]
        else:
            slots = slice(filled, filled + len(frame))
        arrays = transform_features(frame, feature_state)
        parts = (
            arrays.numeric,
            arrays.categorical,
            encode_target(frame[target_name], feature_state, f"{split} split"),
        )
        if out is None:
            out = [np.empty((size, *p.shape[1:]), dtype=p.dtype) for p in parts]
        if filled + len(frame) > size:
            break
        for buffer, part in zip(out, parts):
            buffer[slots] = part
        filled += len(frame)
    if filled != size or offset != n_rows:
        found = f"{offset}" if offset <= n_rows else f"more than {n_rows}"
        raise ModelSphereError(
            f"{data.split_path(split)}: {found} rows where the processed data's "
            f"manifest says {n_rows}: run data_preprocessing.py again"
        )
    return SplitTensors(*(torch.from_numpy(part).to(device) for part in out))
