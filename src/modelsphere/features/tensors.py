"""A split as model inputs: the transformed numeric and categorical arrays and the
encoded target, as tensors on the training device, built chunk by chunk from the
split file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from modelsphere.core.errors import ModelSphereError
from modelsphere.data.splits import SPLIT_CHUNK_ROWS, ProcessedData, iter_split_frames
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
    parts = _model_inputs(frame, feature_state, where)
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
    `rows`, only those rows (positions in the split, in the order given). Only
    the span from the first to the last of them is read (in Parquet, only the
    row groups that hold it); a contiguous `range` (a DDP process's shard) is
    read without an index of its rows."""
    n_rows = data.split_rows(split)
    span, ascending, order, whole = _rows_to_read(data, split, n_rows, rows)
    size = len(span) if ascending is None else len(ascending)
    filled, offset = 0, 0 if whole else span.start
    out = None
    reading = None if whole else span
    frames = iter_split_frames(data, split, chunk_rows=SPLIT_CHUNK_ROWS, rows=reading)
    for frame in frames:
        start, offset = offset, offset + len(frame)
        if ascending is not None:
            lo, hi = np.searchsorted(ascending, [start, offset])
            frame = frame.iloc[ascending[lo:hi] - start]
            slots = order[lo:hi]
        else:
            lo, hi = max(span.start, start), min(span.stop, offset)
            frame = frame.iloc[lo - start : max(lo, hi) - start]
            slots = slice(filled, filled + len(frame))
        if out is not None and not len(frame):
            continue  # a frame outside the rows, read to count the file's rows
        parts = _model_inputs(frame, feature_state, f"{split} split")
        if out is None:
            out = [np.empty((size, *p.shape[1:]), dtype=p.dtype) for p in parts]
        for buffer, part in zip(out, parts):
            buffer[slots] = part
        filled += len(frame)
    if filled != size or offset != (n_rows if whole else span.stop):
        found = f"{offset}" if offset <= n_rows else f"more than {n_rows}"
        if offset < span.stop and not whole:
            found = f"fewer than {span.stop}"
        raise _disagrees_with_manifest(data, split, found)
    return SplitTensors(*(torch.from_numpy(part).to(device) for part in out))


def _model_inputs(frame, feature_state, where: str):
    """The numeric and categorical arrays and the encoded target of a frame."""
    arrays = transform_features(frame, feature_state)
    target = encode_target(frame[feature_state["target"]["name"]], feature_state, where)
    return arrays.numeric, arrays.categorical, target


def _rows_to_read(data, split: str, n_rows: int, rows):
    """The contiguous span of the split that holds the rows; for rows that are
    not a contiguous range, those rows sorted and the output slot of each; and
    whether the whole file is read: a CSV split says its length only when read to
    the end, so every process reads it all (keeping only its rows) and each
    checks the length, where a Parquet footer is checked before reading."""
    stored = data.stored_rows(split)
    if stored is not None and stored != n_rows:
        raise _disagrees_with_manifest(data, split, f"{stored}")
    span, ascending, order = _span_of(split, n_rows, rows)
    return span, ascending, order, rows is None or stored is None


def _span_of(split: str, n_rows: int, rows):
    if rows is None:
        return range(n_rows), None, None
    if isinstance(rows, range) and rows.step == 1:
        ascending = order = None
        first, last = rows.start, rows.stop - 1
    else:
        wanted = np.asarray(rows, dtype=np.int64)
        order = np.argsort(wanted, kind="stable")  # output slot of each, sorted
        ascending = wanted[order]
        first, last = (int(ascending[0]), int(ascending[-1])) if len(rows) else (0, 0)
    if not len(rows):
        return range(0), ascending, order
    if first < 0 or last >= n_rows:
        raise ModelSphereError(
            f"rows {first}..{last} asked of the {split} split, which has "
            f"{n_rows} rows"
        )
    return range(first, last + 1), ascending, order


def _disagrees_with_manifest(data, split: str, found: str) -> ModelSphereError:
    return ModelSphereError(
        f"{data.split_path(split)}: {found} rows where the processed data's "
        f"manifest says {data.split_rows(split)}: run data_preprocessing.py again"
    )
