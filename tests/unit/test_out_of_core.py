"""The out-of-core data path: streaming statistics equal in-memory ones where they
should, stay bounded and seeded where they cannot, and chunked reads of a split
give back exactly the rows a whole read gives."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from helpers import compose_config, csv_overrides, make_table
from modelsphere.data.numbers import parse_numbers
from modelsphere.data.preprocessing import prepare_data
from modelsphere.data.schema import Schema
from modelsphere.data.splits import SPLITS, iter_split_frames, load_split
from modelsphere.features.config import FeatureConfig
from modelsphere.features.fit import (
    ColumnSketch,
    fit_feature_state,
    fit_feature_state_chunks,
    fit_feature_state_from_split,
)

# ----------------------------------------------------------------------------
# parse_numbers: pandas' to_numeric(errors="coerce"), faster

ALL_NUMBERS = [
    "1",
    "-2",
    "+3.5",
    ".5",
    "5.",
    "-3.5e2",
    "1E-3",
    "inf",
    "-inf",
    "Infinity",
    "nan",
    "NaN",
    "12345678901234567890123",
    "1e400",
    "0",
    "-0",
]


def pandas_numbers(values) -> pd.Series:
    text = pd.Series(values, dtype="string")
    return pd.to_numeric(text, errors="coerce").astype("float64")


@pytest.mark.parametrize(
    "values",
    [
        ALL_NUMBERS,  # every value parses: pyarrow's cast
        ALL_NUMBERS + ["abc", "1_000", "0x10", "1,5", "--1"],  # per distinct level
        ["yes", "no", "yes", None, "maybe"],  # text only
        ["1", None, "2", None],  # missing values
        [],
    ],
    ids=["numbers", "mixed", "text", "missing", "empty"],
)
def test_parse_numbers_equals_pandas_to_numeric(values):
    expected = pandas_numbers(values)
    parsed = parse_numbers(pd.Series(values, dtype="string"))
    pd.testing.assert_series_equal(parsed, expected)


def test_parse_numbers_keeps_the_index_and_accepts_object_columns():
    text = pd.Series(["1", "x", "2.5"], index=[10, 11, 12], dtype=object)
    parsed = parse_numbers(text)
    assert list(parsed.index) == [10, 11, 12]
    np.testing.assert_array_equal(parsed.to_numpy(), [1.0, np.nan, 2.5])


# ----------------------------------------------------------------------------
# ColumnSketch and the streaming feature fit


def options(**overrides):
    return OmegaConf.structured(FeatureConfig(**overrides))


def schema(task: str = "binary") -> Schema:
    classes = ["no", "yes"] if task == "binary" else None
    return Schema(
        columns=["x", "z", "c", "y"],
        target="y",
        task=task,
        numeric=["x", "z"],
        categorical=["c"],
        classes=classes,
        target_kind="float" if task == "regression" else "string",
    )


def train_frame(rows: int, seed: int = 0, task: str = "binary") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(size=rows)
    x[rng.random(rows) < 0.05] = np.nan
    if task == "binary":
        y = pd.Series(rng.choice(["no", "yes"], rows))
    else:
        y = pd.Series(rng.normal(10, 3, rows))
    return pd.DataFrame(
        {
            "x": x,
            "z": rng.normal(size=rows),
            "c": pd.Series(rng.choice(list("abcdefg"), rows), dtype="string"),
            "y": y,
        }
    )


def chunks_of(frame: pd.DataFrame, size: int):
    return [frame.iloc[i : i + size] for i in range(0, len(frame), size)]


@pytest.mark.parametrize("task", ["binary", "regression"])
@pytest.mark.parametrize("scaling", ["quantile_normal", "standard"])
def test_streamed_fit_equals_the_in_memory_fit_below_the_sample_size(task, scaling):
    frame = train_frame(3000, task=task)
    opts = options(numeric_scaling=scaling, n_quantiles=100, quantile_subsample=5000)
    whole = fit_feature_state(frame, schema(task), opts, seed=3)
    streamed = fit_feature_state_chunks(chunks_of(frame, 317), schema(task), opts, 3)
    assert json.dumps(streamed) == json.dumps(whole)
    # ... and both are the textbook statistics of the column.
    x = frame["x"].dropna().to_numpy()
    numeric = {column["name"]: column for column in whole["numeric"]}
    assert numeric["x"]["fill_value"] == float(np.median(x))
    if scaling == "standard":
        assert numeric["x"]["mean"] == float(x.mean())
        assert numeric["x"]["std"] == float(x.std())


def test_moments_are_exact_and_the_sample_bounded_beyond_the_sample_size():
    values = np.random.default_rng(1).normal(5.0, 2.0, 200_000)
    values[::97] = np.nan
    sketch = ColumnSketch(capacity=4000, rng=np.random.default_rng(0))
    for start in range(0, values.size, 7919):
        sketch.update(values[start : start + 7919])
    present = values[~np.isnan(values)]
    assert sketch.n_present == present.size
    assert sketch.n_missing == values.size - present.size
    assert not sketch.exact
    mean, std = sketch.mean_std()
    assert mean == pytest.approx(present.mean(), rel=1e-12)
    assert std == pytest.approx(present.std(), rel=1e-12)
    sample = sketch.sample()
    assert sample.size == 4000  # memory: the capacity, not the row count
    assert np.isin(sample, present).all()
    # A uniform sample of the column: its quantiles split the column's values at
    # about the same levels (standard error at most 0.008 with 4,000 values).
    levels = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    below = (present[:, None] < np.quantile(sample, levels)).mean(axis=0)
    np.testing.assert_allclose(below, levels, atol=0.03)


def test_reservoir_takes_late_values_as_often_as_early_ones():
    """Algorithm R: every value is kept with the same probability, whatever its
    position (a bias toward the first chunk would skew quantiles of sorted data)."""
    values = np.arange(100_000, dtype=np.float64)
    sketch = ColumnSketch(capacity=10_000, rng=np.random.default_rng(7))
    for start in range(0, values.size, 4096):
        sketch.update(values[start : start + 4096])
    kept_per_tenth = np.histogram(sketch.sample(), bins=10, range=(0, 100_000))[0]
    assert kept_per_tenth.min() > 850 and kept_per_tenth.max() < 1150


def test_the_sample_is_seeded():
    values = np.random.default_rng(2).normal(size=50_000)

    def sample(seed):
        sketch = ColumnSketch(capacity=1000, rng=np.random.default_rng(seed))
        for start in range(0, values.size, 5000):
            sketch.update(values[start : start + 5000])
        return sketch.sample()

    np.testing.assert_array_equal(sample(0), sample(0))
    assert not np.array_equal(sample(0), sample(1))


def test_category_counts_stream_across_chunks():
    frame = train_frame(2000)
    opts = options(max_category_levels=3)
    whole = fit_feature_state(frame, schema(), opts, seed=0)
    streamed = fit_feature_state_chunks(chunks_of(frame, 7), schema(), opts, seed=0)
    expected = frame["c"].value_counts().sort_index(kind="stable")
    expected = sorted(expected.items(), key=lambda item: (-item[1], item[0]))
    assert streamed["categorical"] == whole["categorical"]
    assert streamed["categorical"][0]["levels"] == [level for level, _ in expected[:3]]


# ----------------------------------------------------------------------------
# Split files: written in row groups of a fixed size, read back chunk by chunk


def prepare(tmp_path, fmt: str):
    source = tmp_path / "table.csv"
    make_table(rows=900, seed=4).to_csv(source, index=False)
    overrides = csv_overrides(source, tmp_path)
    overrides += [f"data.format={fmt}", "data.write_row_group_rows=100"]
    cfg = compose_config(overrides)
    return prepare_data(cfg.data, cfg.paths.data_dir), cfg


@pytest.fixture(params=["parquet", "csv"])
def processed(request, tmp_path):
    return prepare(tmp_path, request.param)


def test_chunked_reads_give_the_rows_of_a_whole_read(processed):
    data, _ = processed
    for split in SPLITS:
        whole = load_split(data, split)
        chunks = list(iter_split_frames(data, split, chunk_rows=64))
        if data.format == "parquet":
            assert all(len(chunk) == 64 for chunk in chunks[:-1])
        joined = pd.concat(chunks, ignore_index=True)
        pd.testing.assert_frame_equal(joined, whole)


def test_parquet_row_groups_have_the_configured_size(tmp_path):
    data, _ = prepare(tmp_path, "parquet")
    train = pq.ParquetFile(data.split_path("train"))
    sizes = [train.metadata.row_group(i).num_rows for i in range(train.num_row_groups)]
    assert len(sizes) > 2
    assert all(size == 100 for size in sizes[:-1]) and 0 < sizes[-1] <= 100


def test_fit_from_the_split_file_equals_the_fit_on_the_loaded_split(processed):
    data, cfg = processed
    features = cfg.model.features
    from_file = fit_feature_state_from_split(data, features, seed=0, chunk_rows=50)
    in_memory = fit_feature_state(load_split(data, "train"), data.schema, features, 0)
    assert json.dumps(from_file) == json.dumps(in_memory)
