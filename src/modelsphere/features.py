"""The feature pipeline: fitted on the train split only, applied everywhere.

`fit_feature_state` learns, from training rows alone, how to impute and scale each
numeric column and which levels each categorical column keeps. Its result is plain
JSON-able data saved in the model artifact; `transform_features` applies it in
training, evaluation, batch prediction and the API alike.

Categorical codes reserve 0 for a missing value and 1 for a level not seen (or
too rare) in training; kept levels start at 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping

import numpy as np
import pandas as pd
import torch

from .errors import ModelSphereError
from .schema import Schema

STATE_VERSION = 1
MISSING_CODE, UNSEEN_CODE, FIRST_LEVEL_CODE = 0, 1, 2
QUANTILE_CLIP = 1e-7  # keeps the normal quantile function finite at the extremes


@dataclass
class FeatureArrays:
    numeric: np.ndarray  # float32 [rows, numeric columns (+ missing indicators)]
    categorical: np.ndarray  # int64 [rows, categorical columns]


def fit_feature_state(
    train: pd.DataFrame, schema: Schema, options: Any, seed: int
) -> Dict[str, Any]:
    """Learn the feature transform from the training rows (sklearn's `fit`)."""
    rng = np.random.default_rng(seed)
    numeric = [_fit_numeric(train[name], name, options, rng) for name in schema.numeric]
    categorical = [
        _fit_categorical(train[name], name, options) for name in schema.categorical
    ]
    return {
        "version": STATE_VERSION,
        "numeric": numeric,
        "categorical": categorical,
        "target": _fit_target(train[schema.target], schema),
    }


def _fit_numeric(values: pd.Series, name: str, options: Any, rng) -> Dict[str, Any]:
    present = values.dropna().to_numpy(dtype=np.float64)
    if present.size == 0:
        raise ModelSphereError(
            f"numeric column {name!r} has no values in the train split"
        )
    state: Dict[str, Any] = {
        "name": name,
        "fill_value": float(np.median(present)),
        "missing_indicator": bool(options.missing_indicator and values.isna().any()),
        "scaling": options.numeric_scaling,
    }
    if options.numeric_scaling == "standard":
        std = float(present.std())
        state.update(mean=float(present.mean()), std=std if std > 0 else 1.0)
    elif options.numeric_scaling == "quantile_normal":
        if present.size > options.quantile_subsample:
            present = rng.choice(
                present, size=options.quantile_subsample, replace=False
            )
        n_quantiles = int(min(options.n_quantiles, present.size))
        levels = np.linspace(0.0, 1.0, max(n_quantiles, 2))
        state["quantiles"] = np.quantile(present, levels).tolist()
    return state


def _fit_categorical(values: pd.Series, name: str, options: Any) -> Dict[str, Any]:
    counts = values.dropna().value_counts()
    counts = counts[counts >= options.min_category_count]
    ranked = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    levels = [str(level) for level, _ in ranked[: options.max_category_levels]]
    return {"name": name, "levels": levels}


def _fit_target(values: pd.Series, schema: Schema) -> Dict[str, Any]:
    state: Dict[str, Any] = {"name": schema.target, "task": schema.task}
    if schema.is_classification:
        state["classes"] = list(schema.classes)
    else:
        target = values.to_numpy(dtype=np.float64)
        std = float(target.std())
        state.update(mean=float(target.mean()), std=std if std > 0 else 1.0)
    return state


def numeric_width(state: Dict[str, Any]) -> int:
    """Numeric inputs to the model: one per column plus missing indicators."""
    return sum(1 + int(col["missing_indicator"]) for col in state["numeric"])


def cardinalities(state: Dict[str, Any]) -> List[int]:
    """Embedding table sizes: kept levels plus the missing and unseen codes."""
    return [len(col["levels"]) + FIRST_LEVEL_CODE for col in state["categorical"]]


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
        out[:, 0] = filled
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
        categorical = np.empty((n_rows, len(self.categorical)), dtype=np.int64)
        for position, (name, lookup, index) in enumerate(self.categorical):
            values = as_object_array(columns[name])
            categorical[:, position] = self._categorical_column(values, lookup, index)
        return FeatureArrays(numeric, categorical)


def transform_features(frame: pd.DataFrame, state: Dict[str, Any]) -> FeatureArrays:
    """Apply the fitted transform (sklearn's `transform`) to a cleaned frame."""
    return FeatureTransform(state).transform(frame, len(frame))


def encode_target(values: pd.Series, state: Dict[str, Any], where: str) -> np.ndarray:
    """Class indices (int64) or the standardised regression target (float32)."""
    target = state["target"]
    if target["task"] == "regression":
        raw = values.to_numpy(dtype=np.float64, na_value=np.nan)
        return ((raw - target["mean"]) / target["std"]).astype(np.float32)
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


def decode_regression(values: np.ndarray, state: Dict[str, Any]) -> np.ndarray:
    target = state["target"]
    return values * target["std"] + target["mean"]
