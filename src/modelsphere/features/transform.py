"""The feature pipeline: fitted on the train split only, applied everywhere.

`fit.py` learns, from training rows alone, how to impute and scale each numeric
column and which levels each categorical column keeps. Its result is plain
JSON-able data saved in the model artifact; `transform_features` here applies it
in training, evaluation, batch prediction and the API alike.

Categorical codes reserve 0 for a missing value and 1 for a level not seen (or
too rare) in training; kept levels start at 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from modelsphere.core.errors import ModelSphereError, RowError
from modelsphere.features.target import transformed

STATE_VERSION = 1
NUMERIC_SCALINGS = ("quantile_normal", "standard", "none")  # model.features
MISSING_CODE, UNSEEN_CODE, FIRST_LEVEL_CODE = 0, 1, 2
QUANTILE_CLIP = 1e-7  # keeps the normal quantile function finite at the extremes
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model's inputs are float32


@dataclass
class FeatureArrays:
    numeric: np.ndarray  # float32 [rows, numeric columns (+ missing indicators)]
    categorical: np.ndarray  # int64 [rows, categorical columns]


def numeric_width(state: Dict[str, Any]) -> int:
    """Numeric inputs to the model: one per column plus missing indicators."""
    return sum(1 + int(col["missing_indicator"]) for col in state["numeric"])


def cardinalities(state: Dict[str, Any]) -> List[int]:
    """Embedding table sizes: kept levels plus the missing and unseen codes, for
    the categorical columns, then for the discrete numeric columns."""
    categorical = [
        len(col["levels"]) + FIRST_LEVEL_CODE for col in state["categorical"]
    ]
    levels = [
        len(col["values"]) + FIRST_LEVEL_CODE for col in state.get("numeric_levels", [])
    ]
    return categorical + levels


def numeric_level_codes(raw: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Codes of a discrete numeric column's values among its sorted train values:
    missing (NaN) and values not seen in training get the reserved codes."""
    positions = np.minimum(np.searchsorted(values, raw), len(values) - 1)
    seen = values[positions] == raw
    return np.where(
        np.isnan(raw),
        MISSING_CODE,
        np.where(seen, positions + FIRST_LEVEL_CODE, UNSEEN_CODE),
    ).astype(np.int64)


def _quantile_normal(
    values: np.ndarray, q: np.ndarray, refs: np.ndarray, strictly_increasing: bool
) -> np.ndarray:
    """Map values to their train quantile level, then through the normal quantile
    function (refs are the levels of `q`: 0 to 1, evenly spaced)."""
    if strictly_increasing:
        ranks = np.interp(values, q, refs)
    else:
        # Repeated quantiles (ties): interpolate up and down and average, so a tied
        # value maps to the middle of its rank range rather than to its edge.
        ranks = 0.5 * (
            np.interp(values, q, refs) - np.interp(-values, -q[::-1], -refs[::-1])
        )
    ranks = np.clip(ranks, QUANTILE_CLIP, 1.0 - QUANTILE_CLIP)
    return torch.special.ndtri(torch.from_numpy(ranks)).numpy()


def as_float_array(values: Any) -> np.ndarray:
    """float64 values with NaN for missing, from a Series, array or list."""
    if hasattr(values, "to_numpy"):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.array(
        [np.nan if value is None else value for value in values], dtype=np.float64
    )


def as_object_array(values: Any) -> np.ndarray:
    """Category values as Python objects with None for missing."""
    if hasattr(values, "to_numpy"):
        return values.to_numpy(dtype=object, na_value=None)
    return np.asarray(values, dtype=object)


def _arrow_codes(values: Any, levels: pa.Array) -> Optional[np.ndarray]:
    """Category codes by a hash lookup in C++ (pyarrow): ~10x faster than pandas'
    indexer on a string column. None when the values are not all text (the
    caller falls back to the general path)."""
    try:
        array = pa.array(values, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    positions = pc.index_in(array, value_set=levels)
    codes = pc.if_else(
        array.is_null(),
        MISSING_CODE,
        pc.fill_null(pc.add(positions, FIRST_LEVEL_CODE), UNSEEN_CODE),
    )
    return codes.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _refuse_out_of_range(raw: np.ndarray, scaled: np.ndarray, col: Dict[str, Any]):
    """A finite value whose model input is not (beyond float32 once scaled) would
    make the scores NaN: refused, naming the column and the rows."""
    positions = np.flatnonzero(~np.isfinite(scaled)).tolist()
    first = positions[0]
    raise RowError(
        f"column {col['name']!r}: {float(raw[first])!r} is out of the range the "
        f"model accepts (beyond float32's +-{FLOAT32_MAX:.3g} once scaled, scaling "
        f"{col['scaling']!r}); {len(positions)} such value(s)",
        positions,
        col["name"],
    )


class FeatureTransform:
    """The fitted state compiled once (arrays, level lookups) and applied many times:
    per batch in training and predict.py, per request in the API.

    `transform` takes any mapping from column name to values that are already
    cleaned (`cleaning.py`): floats/NaN for numeric columns, strings/None for
    categorical ones; a DataFrame or a dict of lists both work.
    """

    LOOKUP_BELOW_ROWS = 256  # a dict lookup beats pandas' indexer on small inputs

    def __init__(self, state: Dict[str, Any]):
        self.state = state
        self.numeric = []
        for col in state["numeric"]:
            compiled = dict(col)
            if col["scaling"] == "quantile_normal":
                q = np.asarray(col["quantiles"], dtype=np.float64)
                compiled["q"], compiled["refs"] = q, np.linspace(0.0, 1.0, len(q))
                compiled["increasing"] = bool(np.all(np.diff(q) > 0))
            self.numeric.append(compiled)
        self.categorical = [
            (
                col["name"],
                {
                    level: code
                    for code, level in enumerate(col["levels"], FIRST_LEVEL_CODE)
                },
                pd.Index(col["levels"], dtype=object),
            )
            for col in state["categorical"]
        ]
        self.arrow_levels = [
            pa.array(col["levels"], type=pa.string()) for col in state["categorical"]
        ]
        self.numeric_levels = [
            (col["name"], np.asarray(col["values"], dtype=np.float64))
            for col in state.get("numeric_levels", [])
        ]
        self.width = numeric_width(state)

    def _numeric_column(
        self, raw: np.ndarray, col: Dict[str, Any], out: np.ndarray
    ) -> int:
        missing = np.isnan(raw)
        filled = np.where(missing, col["fill_value"], raw)
        if col["scaling"] == "standard":
            filled = (filled - col["mean"]) / col["std"]
        elif col["scaling"] == "quantile_normal":
            filled = _quantile_normal(filled, col["q"], col["refs"], col["increasing"])
        with np.errstate(over="ignore"):  # beyond float32: refused just below
            out[:, 0] = filled
        if not np.isfinite(out[:, 0]).all():
            _refuse_out_of_range(raw, out[:, 0], col)
        if col["missing_indicator"]:
            out[:, 1] = missing
            return 2
        return 1

    def _categorical_column(self, values: np.ndarray, lookup, index) -> np.ndarray:
        if len(values) < self.LOOKUP_BELOW_ROWS:
            return np.fromiter(
                (
                    (
                        MISSING_CODE
                        if value is None or value != value  # None or NaN
                        else lookup.get(value, UNSEEN_CODE)
                    )
                    for value in values
                ),
                dtype=np.int64,
                count=len(values),
            )
        missing = pd.isna(values)
        codes = index.get_indexer(values)
        return np.where(
            missing,
            MISSING_CODE,
            np.where(codes < 0, UNSEEN_CODE, codes + FIRST_LEVEL_CODE),
        )

    def transform(self, columns: Mapping[str, Any], n_rows: int) -> FeatureArrays:
        """Columns are written one at a time into preallocated float32/int64
        arrays, so peak memory is the output plus one float64 column."""
        numeric = np.empty((n_rows, self.width), dtype=np.float32)
        position = 0
        for col in self.numeric:
            raw = as_float_array(columns[col["name"]])
            position += self._numeric_column(raw, col, numeric[:, position:])
        n_codes = len(self.categorical) + len(self.numeric_levels)
        categorical = np.empty((n_rows, n_codes), dtype=np.int64)
        for position, (name, values) in enumerate(
            self.numeric_levels, len(self.categorical)
        ):
            raw = as_float_array(columns[name])
            categorical[:, position] = numeric_level_codes(raw, values)
        for position, (name, lookup, index) in enumerate(self.categorical):
            codes = None
            if n_rows >= self.LOOKUP_BELOW_ROWS:
                codes = _arrow_codes(columns[name], self.arrow_levels[position])
            if codes is None:
                values = as_object_array(columns[name])
                codes = self._categorical_column(values, lookup, index)
            categorical[:, position] = codes
        return FeatureArrays(numeric, categorical)


def transform_features(frame: pd.DataFrame, state: Dict[str, Any]) -> FeatureArrays:
    """Apply the fitted transform (sklearn's `transform`) to a cleaned frame."""
    return FeatureTransform(state).transform(frame, len(frame))


def encode_target(values: pd.Series, state: Dict[str, Any], where: str) -> np.ndarray:
    """Class indices (int64) or the standardised, transformed regression target
    (float32; see target.py)."""
    target = state["target"]
    if target["task"] == "regression":
        raw = values.to_numpy(dtype=np.float64, na_value=np.nan)
        scaled = transformed(raw, target, where)
        return ((scaled - target["mean"]) / target["std"]).astype(np.float32)
    classes = target["classes"]
    labels = values.astype(object)
    codes = pd.Index(classes, dtype=object).get_indexer(labels)
    unknown = codes < 0
    if unknown.any():
        first = labels[unknown].iloc[0]
        raise ModelSphereError(
            f"{where}: target {target['name']!r} holds {int(unknown.sum())} value(s) "
            f"that are not classes of this model, e.g. {first!r}; classes: {classes}"
        )
    return codes.astype(np.int64)
