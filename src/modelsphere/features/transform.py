"""The feature pipeline: fitted on the train split only, applied everywhere.

`fit_feature_state` learns, from training rows alone, how to impute and scale each
numeric column and which levels each categorical column keeps. Its result is plain
JSON-able data saved in the model artifact; `transform_features` applies it in
training, evaluation, batch prediction and the API alike.

Categorical codes reserve 0 for a missing value and 1 for a level not seen (or
too rare) in training; kept levels start at 2.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from modelsphere.core.errors import ModelSphereError
from modelsphere.data.preprocessing import (
    SPLIT_CHUNK_ROWS,
    ProcessedData,
    iter_split_frames,
)
from modelsphere.data.schema import Schema

STATE_VERSION = 1
NUMERIC_SCALINGS = ("quantile_normal", "standard", "none")  # model.features
MISSING_CODE, UNSEEN_CODE, FIRST_LEVEL_CODE = 0, 1, 2
QUANTILE_CLIP = 1e-7  # keeps the normal quantile function finite at the extremes


@dataclass
class FeatureArrays:
    numeric: np.ndarray  # float32 [rows, numeric columns (+ missing indicators)]
    categorical: np.ndarray  # int64 [rows, categorical columns]


def fit_feature_state(
    train: Mapping[str, Any], schema: Schema, options: Any, seed: int
) -> Dict[str, Any]:
    """Learn the feature transform from the training rows (sklearn's `fit`): the
    streaming fit below, given the whole frame as its one chunk."""
    return fit_feature_state_chunks([train], schema, options, seed)


def fit_feature_state_chunks(
    chunks: Iterable[Mapping[str, Any]], schema: Schema, options: Any, seed: int
) -> Dict[str, Any]:
    """Learn the feature transform from training rows given chunk by chunk
    (cleaned frames, or any mapping from column name to values)."""
    fitter = FeatureFitter(schema, options, seed)
    for chunk in chunks:
        fitter.update(chunk)
    return fitter.state()


def fit_feature_state_from_split(
    processed: ProcessedData,
    options: Any,
    seed: int,
    split: str = "train",
    chunk_rows: int = SPLIT_CHUNK_ROWS,
) -> Dict[str, Any]:
    """The feature transform fitted on a processed split file, read a row group
    at a time: memory is bounded by the sketches, not the split's rows."""
    schema = processed.schema
    columns = schema.features + [schema.target]
    chunks = iter_split_frames(processed, split, columns, chunk_rows)
    return fit_feature_state_chunks(chunks, schema, options, seed)


class ColumnSketch:
    """Streaming statistics of one numeric column: present and missing counts,
    mean and variance (Chan et al.'s pairwise update) and a seeded reservoir
    sample (Algorithm R) of at most `capacity` present values.

    Until it overflows, the sample holds every present value in input order, so
    statistics taken from it equal those of an in-memory fit bit for bit.
    """

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity, self.rng = capacity, rng
        self.n_present = self.n_missing = 0
        self.mean = self.m2 = 0.0
        self._parts: List[np.ndarray] = []  # while filling, in input order
        self._full: Optional[np.ndarray] = None

    @property
    def exact(self) -> bool:
        """Whether the sample holds every present value."""
        return self.n_present <= self.capacity

    def sample(self) -> np.ndarray:
        if self._full is not None:
            return self._full
        if len(self._parts) == 1:
            return self._parts[0]
        return np.concatenate(self._parts) if self._parts else np.empty(0)

    def update(self, values: np.ndarray) -> None:
        missing = np.isnan(values)
        present = values[~missing]
        self.n_missing += int(missing.sum())
        if present.size == 0:
            return
        self._merge_moments(present)
        filled = min(self.n_present, self.capacity)
        self.n_present += present.size
        take = min(self.capacity - filled, present.size)
        if take:
            self._parts.append(present[:take])
            if filled + take == self.capacity:
                self._full, self._parts = np.concatenate(self._parts), []
        if take < present.size:
            self._replace(present[take:])

    def _merge_moments(self, present: np.ndarray) -> None:
        n_a, n_b = self.n_present, present.size
        mean_b = float(present.mean())
        m2_b = float(np.square(present - mean_b).sum())
        delta, n = mean_b - self.mean, n_a + n_b
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * n_a * n_b / n

    def _replace(self, values: np.ndarray) -> None:
        """Algorithm R: the i-th value (1-based, i > capacity) takes a random slot
        with probability capacity / i; where slots repeat, the later value wins."""
        positions = np.arange(self.n_present - values.size, self.n_present) + 1
        slots = self.rng.integers(0, positions)
        chosen = slots < self.capacity
        slots, values = slots[chosen], values[chosen]
        last = slots.size - 1 - np.unique(slots[::-1], return_index=True)[1]
        self._full[slots[last]] = values[last]

    def mean_std(self) -> tuple[float, float]:
        """Population mean and standard deviation, as numpy computes them."""
        if self.exact:
            sample = self.sample()
            return float(sample.mean()), float(sample.std())
        return self.mean, math.sqrt(max(self.m2 / self.n_present, 0.0))


class DistinctValues:
    """The distinct present values of a numeric column while there are at most
    `limit` of them; `values` is None once there are more (or limit is 0)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.values: Optional[set] = set() if limit > 0 else None

    def update(self, values: np.ndarray) -> None:
        if self.values is None:
            return
        present = values[~np.isnan(values)]
        self.values.update(np.unique(present).tolist())
        if len(self.values) > self.limit:
            self.values = None


class FeatureFitter:
    """The streaming `fit`: `update` with chunks of train rows, then `state()`.

    Memory is bounded by the sketches whatever the row count: per numeric column
    a sample of at most `options.quantile_subsample` values (8 bytes each), per
    categorical column one count per distinct level. Quantiles and the median
    fill value come from the sample; mean and variance from all values. With at
    most `quantile_subsample` rows, the state equals an in-memory fit's exactly.
    """

    def __init__(self, schema: Schema, options: Any, seed: int):
        self.schema, self.options = schema, options
        streams = np.random.SeedSequence(seed).spawn(len(schema.numeric) + 1)
        self.numeric = {
            name: ColumnSketch(options.quantile_subsample, np.random.default_rng(s))
            for name, s in zip(schema.numeric, streams)
        }
        self.distinct = {
            name: DistinctValues(options.numeric_level_max) for name in schema.numeric
        }
        self.categorical = {name: Counter() for name in schema.categorical}
        self.target: Optional[ColumnSketch] = None
        if not schema.is_classification:
            capacity = options.quantile_subsample
            self.target = ColumnSketch(capacity, np.random.default_rng(streams[-1]))

    def update(self, chunk: Mapping[str, Any]) -> None:
        for name, sketch in self.numeric.items():
            values = as_float_array(chunk[name])
            sketch.update(values)
            self.distinct[name].update(values)
        for name, counts in self.categorical.items():
            values = pd.Series(chunk[name])
            counts.update(values.dropna().value_counts().to_dict())
        if self.target is not None:
            self.target.update(as_float_array(chunk[self.schema.target]))

    def state(self) -> Dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "numeric": [
                _numeric_state(name, sketch, self.options)
                for name, sketch in self.numeric.items()
            ],
            "categorical": [
                _categorical_state(name, counts, self.options)
                for name, counts in self.categorical.items()
            ],
            "numeric_levels": [
                {"name": name, "values": sorted(distinct.values)}
                for name, distinct in self.distinct.items()
                if distinct.values is not None and len(distinct.values) >= 2
            ],
            "target": self._target_state(),
        }

    def _target_state(self) -> Dict[str, Any]:
        schema = self.schema
        state: Dict[str, Any] = {"name": schema.target, "task": schema.task}
        if self.target is None:
            state["classes"] = list(schema.classes)
        elif self.target.n_missing:  # as numpy: a NaN target makes the mean NaN
            state.update(mean=math.nan, std=1.0)
        else:
            mean, std = self.target.mean_std()
            state.update(mean=mean, std=std if std > 0 else 1.0)
        return state


def _numeric_state(name: str, sketch: ColumnSketch, options: Any) -> Dict[str, Any]:
    if sketch.n_present == 0:
        raise ModelSphereError(
            f"numeric column {name!r} has no values in the train split"
        )
    sample = sketch.sample()
    state: Dict[str, Any] = {
        "name": name,
        "fill_value": float(np.median(sample)),
        "missing_indicator": bool(options.missing_indicator and sketch.n_missing),
        "scaling": options.numeric_scaling,
    }
    if options.numeric_scaling == "standard":
        mean, std = sketch.mean_std()
        state.update(mean=mean, std=std if std > 0 else 1.0)
    elif options.numeric_scaling == "quantile_normal":
        n_quantiles = int(min(options.n_quantiles, sample.size))
        levels = np.linspace(0.0, 1.0, max(n_quantiles, 2))
        state["quantiles"] = np.quantile(sample, levels).tolist()
    return state


def _categorical_state(name: str, counts: Counter, options: Any) -> Dict[str, Any]:
    frequent = [
        (level, count)
        for level, count in counts.items()
        if count >= options.min_category_count
    ]
    ranked = sorted(frequent, key=lambda item: (-item[1], str(item[0])))
    levels = [str(level) for level, _ in ranked[: options.max_category_levels]]
    return {"name": name, "levels": levels}


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
