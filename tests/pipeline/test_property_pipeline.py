"""Property: on any table, preprocess -> train 1 epoch -> predict ends cleanly.

Hypothesis draws random tables with random schemas: 30-120 rows; 1-6 feature
columns, each a float column with missing values, a float column with infinities,
an integer column, a numeric column with one word in it, a low-cardinality text
column with missing values, a high-cardinality text column, a constant column or
an all-missing column; sometimes an id column (text or integer); a binary text,
multiclass integer or regression float target, sometimes degenerate (one row of a
second class, or a single class: a constant target for regression).

The pipeline runs in-process on the raw CSV (data_preprocessing, train with
mlp_small for 1 epoch on the CPU, predict on that same raw CSV; everything in a
temporary folder). Either it stops with a ModelSphereError, one line, and only
where the docs say it may (a single class, a class too rare for the validation
metric, no usable feature, or a word in a numeric column, which preprocessing
makes missing but predict.py refuses, naming the column and row), and never with
another exception type; or predict gives exactly one prediction per input row in
input order, the id column kept, probabilities in [0, 1] summing to 1.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import compose_config, csv_overrides
from modelsphere.core.errors import ModelSphereError
from modelsphere.inference.batch_predict import run_batch_prediction
from modelsphere.training.run import run_preprocessing, run_training

FEATURE_KINDS = (
    "float_with_nan",
    "float_with_inf",
    "integer",
    "numeric_with_a_word",
    "low_cardinality_text",
    "high_cardinality_text",
    "constant",
    "all_missing",
)
UNUSABLE_KINDS = ("constant", "all_missing")
TARGET_KINDS = ("binary", "multiclass", "regression")
ID_COLUMNS = {"text": "row_id", "integer": "id"}
TARGET = "label"
PROBABILITY_SUFFIX = "_probability"
WORD = "unknown"  # not one of the strings that mean "missing"


@dataclass(frozen=True)
class TableSpec:
    rows: int
    features: List[str]  # one kind per feature column
    target: str
    id_kind: Optional[str]  # None | "text" | "integer"
    classes: int  # multiclass only
    degenerate: Optional[str]  # None | "rare_class" | "single_class"
    seed: int

    @property
    def id_column(self) -> Optional[str]:
        return ID_COLUMNS.get(self.id_kind)

    def column_names(self) -> List[str]:
        return [f"f{i}_{kind}" for i, kind in enumerate(self.features)]


@st.composite
def table_specs(draw) -> TableSpec:
    return TableSpec(
        rows=draw(st.integers(30, 120)),
        features=draw(st.lists(st.sampled_from(FEATURE_KINDS), min_size=1, max_size=6)),
        target=draw(st.sampled_from(TARGET_KINDS)),
        id_kind=draw(st.sampled_from([None, "text", "integer"])),
        classes=draw(st.integers(3, 4)),
        degenerate=draw(
            st.sampled_from([None, None, None, None, "rare_class", "single_class"])
        ),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def feature_column(kind: str, rows: int, rng: np.random.Generator) -> list:
    numbers = np.round(rng.normal(50, 20, rows), 3)
    if kind == "float_with_nan":
        return np.where(rng.random(rows) < 0.1, np.nan, numbers).tolist()
    if kind == "float_with_inf":
        values: list = numbers.tolist()
        values[int(rng.integers(rows))] = "inf"
        values[int(rng.integers(rows))] = "-inf"
        return values
    if kind == "integer":
        return rng.integers(-5, 100, rows).tolist()
    if kind == "numeric_with_a_word":
        values = numbers.tolist()
        values[int(rng.integers(rows))] = WORD  # < 5% of the rows: still numeric
        return values
    if kind == "low_cardinality_text":
        levels = np.array(["red", "green", "blue", None], dtype=object)
        return levels[rng.integers(0, 4, rows)].tolist()
    if kind == "high_cardinality_text":
        return [f"h{value}" for value in rng.integers(0, rows, rows)]
    if kind == "constant":
        return ["same"] * rows
    return [None] * rows  # all_missing


def target_column(spec: TableSpec, rng: np.random.Generator) -> list:
    rows = spec.rows
    if spec.target == "regression":
        if spec.degenerate == "single_class":
            return [3.5] * rows  # a constant target
        return np.round(rng.normal(0, 10, rows), 4).tolist()
    labels = ["no", "yes"] if spec.target == "binary" else list(range(spec.classes))
    # Every class gets an equal share (>= 7 rows), in random order: enough for
    # the stratified split to put each class in train, val and test.
    values = [labels[i % len(labels)] for i in range(rows)]
    if spec.degenerate == "rare_class":
        values = [labels[0]] * rows
        values[0] = labels[1]  # one row of the second class
    elif spec.degenerate == "single_class":
        values = [labels[0]] * rows
    return list(np.asarray(values, dtype=object)[rng.permutation(rows)])


def make_random_table(spec: TableSpec) -> pd.DataFrame:
    rng = np.random.default_rng(spec.seed)
    columns = {}
    if spec.id_kind == "text":
        columns[spec.id_column] = [f"r{i:05d}" for i in rng.permutation(spec.rows)]
    elif spec.id_kind == "integer":
        columns[spec.id_column] = rng.permutation(spec.rows).tolist()
    for name, kind in zip(spec.column_names(), spec.features):
        columns[name] = feature_column(kind, spec.rows, rng)
    columns[TARGET] = target_column(spec, rng)
    return pd.DataFrame(columns)


def run_pipeline(raw: Path, base: Path, task: str) -> pd.DataFrame:
    """data_preprocessing.py, train.py (1 epoch) and predict.py, in-process."""
    train_cfg = compose_config(
        csv_overrides(raw, base, task) + ["train.max_epochs=1", "train.plot=false"]
    )
    run_preprocessing(train_cfg)
    run_dir = base / "outputs" / "train" / "run"
    run_training(train_cfg, run_dir)
    output = base / "scored.parquet"
    predict_cfg = compose_config(
        [
            f"run_dir={run_dir}",
            f"input={raw}",
            f"output={output}",
            f"paths.outputs_dir={base / 'outputs'}",
            "device=cpu",
        ],
        config_name="predict",
    )
    summary = run_batch_prediction(predict_cfg, base / "predict_run")
    scored = pd.read_parquet(output)
    assert summary["rows"] == len(scored)
    return scored


def check_refusal(message: str, spec: TableSpec) -> None:
    """A refusal is one line, and only for a draw the docs say may be refused."""
    assert message.strip() and "\n" not in message, message
    if spec.degenerate and spec.target != "regression":
        return  # a single class, or a class missing from the validation split
    if all(kind in UNUSABLE_KINDS for kind in spec.features):
        assert "no usable feature columns" in message, message
        return
    words = [
        name
        for name, kind in zip(spec.column_names(), spec.features)
        if kind == "numeric_with_a_word"
    ]
    assert words, (spec, message)  # nothing else should be refused
    assert any(f"column {name!r} must be numeric" in message for name in words)
    assert f"holds {WORD!r}" in message and "row " in message, message


def check_predictions(scored: pd.DataFrame, table: pd.DataFrame, spec: TableSpec):
    assert len(scored) == len(table)
    if spec.id_column is not None:
        assert scored.columns[0] == spec.id_column
        expected = table[spec.id_column].astype(str).tolist()
        assert scored[spec.id_column].astype(str).tolist() == expected
    if spec.target == "regression":
        assert list(scored.columns[-1:]) == ["prediction"]
        assert np.isfinite(scored["prediction"].to_numpy()).all()
        return
    probabilities = scored[[c for c in scored if c.endswith(PROBABILITY_SUFFIX)]]
    classes = [c[: -len(PROBABILITY_SUFFIX)] for c in probabilities]
    assert sorted(classes) == sorted(str(c) for c in table[TARGET].unique())
    values = probabilities.to_numpy()
    assert np.isfinite(values).all()
    assert ((values >= 0) & (values <= 1)).all()
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-5)
    best = np.asarray(classes, dtype=object)[values.argmax(axis=1)]
    assert scored["prediction"].astype(str).tolist() == best.tolist()


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,  # the same tables on every run and machine
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(spec=table_specs())
def test_pipeline_scores_every_row_or_stops_with_a_clear_error(spec: TableSpec):
    table = make_random_table(spec)
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        raw = base / "table.csv"
        table.to_csv(raw, index=False)
        try:
            scored = run_pipeline(raw, base, spec.target)
        except ModelSphereError as error:
            message = str(error).replace(str(base), "<tmp>")
            event(f"refused: {re.sub(r'[0-9]+', 'N', message)[:70]}")
            check_refusal(message, spec)
            return
        event(f"scored: {spec.target}")
        # One class cannot be classified; a constant regression target is fine.
        assert spec.degenerate != "single_class" or spec.target == "regression"
        assert "numeric_with_a_word" not in spec.features, spec
        check_predictions(scored, table, spec)
