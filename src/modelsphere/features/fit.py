"""Fitting the feature state on the train split, in one streaming pass:
exact means and variances, a seeded reservoir sample for the quantiles, and
category counts per column. The result is the plain-data state `transform.py`
applies everywhere."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional

import numpy as np
import pandas as pd

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.progress import progress_bar
from modelsphere.data.schema import Schema
from modelsphere.data.splits import SPLIT_CHUNK_ROWS, ProcessedData, iter_split_frames
from modelsphere.features.target import choose_transform
from modelsphere.features.transform import STATE_VERSION, as_float_array


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
    fitter = FeatureFitter(schema, options, seed)
    total = processed.split_rows(split)
    with progress_bar(f"fitting features on {split}", total=total) as advance:
        for chunk in iter_split_frames(processed, split, columns, chunk_rows):
            fitter.update(chunk)
            advance(len(chunk))
    return fitter.state()


class ColumnSketch:
    """Streaming statistics of one numeric column: present and missing counts,
    minimum and maximum, mean and variance (Chan et al.'s pairwise update) and a
    seeded reservoir sample (Algorithm R) of at most `capacity` present values.

    Until it overflows, the sample holds every present value in input order, so
    statistics taken from it equal those of an in-memory fit bit for bit.
    """

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity, self.rng = capacity, rng
        self.n_present = self.n_missing = 0
        self.mean = self.m2 = 0.0
        self.low, self.high = math.inf, -math.inf  # of every present value
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
        self.low = min(self.low, float(present.min()))
        self.high = max(self.high, float(present.max()))
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
            sample = self.target.sample()
            options = self.options
            transform = choose_transform(
                sample, options.target_transform, options.target_log_skew, schema.target
            )
            if transform == "none":  # exact moments, whatever the row count
                mean, std = self.target.mean_std()
            else:  # of the sample: all values up to quantile_subsample rows
                logged = np.log1p(sample)
                mean, std = float(logged.mean()), float(logged.std())
                # the range predictions are held to (target.py)
                state.update(
                    low=math.log1p(self.target.low), high=math.log1p(self.target.high)
                )
            state.update(transform=transform, mean=mean, std=std if std > 0 else 1.0)
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
