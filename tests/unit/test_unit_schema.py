"""Schema inference: ColumnStats (the scan) + infer_schema (the decisions)."""

from __future__ import annotations

import math
from typing import Dict

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from helpers import make_table
from modelsphere.core.errors import ModelSphereError
from modelsphere.data.config import DataConfig
from modelsphere.data.schema import ColumnStats, Schema, infer_schema


def data_cfg(**overrides):
    """A data config node with the schema's defaults, target `label`."""
    cfg = OmegaConf.structured(DataConfig)
    cfg.name = "unit"
    cfg.target = "label"
    return OmegaConf.merge(cfg, overrides)


def as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """What the CSV reader yields: every column as strings, missing cells as NA."""
    return frame.astype("string")


def scan(frame: pd.DataFrame, max_levels: int = 10_000) -> Dict[str, ColumnStats]:
    stats = {}
    for name in frame.columns:
        stats[name] = ColumnStats(name)
        stats[name].update(as_text(frame[[name]])[name], 0, max_levels)
    return stats


def infer(frame: pd.DataFrame, **overrides) -> Schema:
    return infer_schema(
        scan(frame), list(frame.columns), data_cfg(**overrides), "unit.csv"
    )


def labelled(n: int = 40, **columns) -> pd.DataFrame:
    """A frame with a numeric feature, a binary label and extra columns."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=n).round(3)})
    for name, values in columns.items():
        frame[name] = values
    frame["label"] = np.where(np.arange(n) % 2, "yes", "no")
    return frame


# ----------------------------------------------------------------------------
# ColumnStats


def test_column_stats_numeric_strings_and_blanks():
    stats = ColumnStats("x")
    stats.update(
        pd.Series([" 1.5", "", None, "2 ", "   ", "-3"], dtype="string"), 0, 10
    )
    assert stats.n_rows == 6
    assert stats.n_missing == 3
    assert stats.n_numeric == 3
    assert stats.numeric_share == 1.0
    assert stats.n_integer == 2
    assert (stats.minimum, stats.maximum) == (-3.0, 2.0)
    assert stats.first_text_row is None
    assert set(stats.levels) == {"1.5", "2", "-3"}


def test_column_stats_record_first_text_row_with_offset():
    values = pd.Series(["1", "2", "n/a-ish", "4", "oops"], dtype="string")
    stats = ColumnStats("x")
    stats.update(values, row_offset=100, max_levels=10)
    assert stats.first_text_row == 103
    assert stats.first_text_value == "n/a-ish"
    assert stats.n_numeric == 3
    assert stats.numeric_share == pytest.approx(3 / 5)


def test_column_stats_accumulate_over_batches_and_profile():
    stats = ColumnStats("x")
    stats.update(pd.Series(["1", "2"], dtype="string"), 0, 10)
    stats.update(pd.Series(["3", None, "inf"], dtype="string"), 2, 10)
    assert stats.n_rows == 5
    assert stats.n_nonfinite == 1
    profile = stats.profile()
    assert profile["missing"] == 1
    assert profile["missing_fraction"] == pytest.approx(0.2)
    assert profile["mean"] == pytest.approx(2.0)
    assert profile["std"] == pytest.approx(math.sqrt(2 / 3))
    assert (profile["min"], profile["max"]) == (1.0, 3.0)
    assert profile["distinct"] == 4


def test_column_stats_levels_overflow():
    stats = ColumnStats("x")
    stats.update(pd.Series([f"v{i}" for i in range(20)], dtype="string"), 0, 5)
    assert stats.levels_overflow
    assert stats.levels == {}
    assert stats.profile()["distinct"] is None


# ----------------------------------------------------------------------------
# Column roles


def test_numeric_categorical_and_id_detection_on_mixed_table():
    schema = infer(make_table(rows=120))
    assert schema.numeric == ["age", "income"]
    assert schema.categorical == ["plan", "region"]
    assert schema.id_column == "customer_id"
    assert schema.target == "label"
    assert schema.task == "binary"
    assert schema.classes == ["no", "yes"]
    assert schema.target_kind == "string"
    assert schema.features == ["age", "income", "plan", "region"]
    assert schema.ignored == {}


def test_rownames_column_is_the_id():
    frame = labelled(rownames=[str(i) for i in range(1, 41)])
    schema = infer(frame)
    assert schema.id_column == "rownames"
    assert "rownames" not in schema.features


def test_id_like_name_that_is_not_unique_is_a_feature():
    frame = labelled(customer_id=[f"C{i % 10}" for i in range(40)])
    schema = infer(frame)
    assert schema.id_column is None
    assert schema.categorical == ["customer_id"]


def test_unique_amount_column_ending_in_id_letters_is_not_an_id():
    """`amount_paid` ends in the letters "id" but is a number to learn from."""
    frame = labelled(amount_paid=np.linspace(10.5, 99.9, 40).round(2))
    schema = infer(frame)
    assert schema.id_column is None
    assert "amount_paid" in schema.numeric


def test_numeric_threshold_decides_numeric_or_categorical():
    mostly_numbers = [str(i % 20) for i in range(39)] + ["unknown"]
    half_text = [str(i) if i % 2 else f"t{i % 4}" for i in range(40)]
    frame = labelled(mostly=mostly_numbers, half=half_text)
    schema = infer(frame)
    assert "mostly" in schema.numeric
    assert "half" in schema.categorical
    strict = infer(frame, numeric_threshold=1.0)
    assert "mostly" in strict.categorical


def test_all_missing_and_constant_columns_are_ignored():
    frame = labelled(empty=[None] * 40, same=["k"] * 40)
    schema = infer(frame)
    assert schema.ignored == {"empty": "all values missing", "same": "constant"}
    assert "empty" not in schema.features and "same" not in schema.features


def test_constant_with_missing_values_is_kept():
    frame = labelled(flag=["k" if i % 3 else None for i in range(40)])
    assert infer(frame).categorical == ["flag"]


def test_unique_text_column_is_ignored_but_only_with_enough_rows():
    frame = labelled(notes=[f"note number {i}" for i in range(40)])
    schema = infer(frame)
    assert "notes" in schema.ignored
    assert "unique" in schema.ignored["notes"]
    small = labelled(n=10, notes=[f"note number {i}" for i in range(10)])
    assert infer(small).categorical == ["notes"]


def test_explicit_roles_are_honoured():
    frame = make_table(rows=60)
    frame["code"] = [f"K{i}" for i in range(60)]
    schema = infer(
        frame,
        numeric=["age"],
        categorical=["income"],
        ignore=["region"],
        id_column="code",
    )
    assert schema.numeric == ["age"]
    assert schema.categorical == ["income", "plan"]
    assert schema.ignored["region"] == "listed in data.ignore"
    assert schema.id_column == "code"
    # An explicit id column switches off id detection: customer_id, unique text,
    # is then ignored as a second identifier (it would leak the row order).
    assert "identifier" in schema.ignored["customer_id"]
    assert "customer_id" not in schema.features
    assert "customer_id" not in schema.features


@pytest.mark.parametrize(
    "key, value",
    [
        ("numeric", ["age", "agee"]),
        ("categorical", ["planz"]),
        ("ignore", ["nope"]),
        ("id_column", "ident"),
    ],
)
def test_unknown_column_names_are_errors_naming_them(key, value):
    frame = make_table(rows=30)
    with pytest.raises(ModelSphereError) as err:
        infer(frame, **{key: value})
    message = str(err.value)
    assert f"data.{key}" in message
    names = [value] if isinstance(value, str) else value
    unknown = [name for name in names if name not in frame.columns]
    assert unknown
    for name in unknown:
        assert repr(name) in message
    assert "unit.csv" in message
    assert "customer_id" in message  # the real columns are listed


def test_column_given_two_roles_is_an_error():
    with pytest.raises(ModelSphereError, match=r"\['age'\].*two roles"):
        infer(make_table(rows=30), numeric=["age"], categorical=["age"])


def test_target_as_a_feature_is_an_error():
    with pytest.raises(ModelSphereError, match="two roles"):
        infer(make_table(rows=30), categorical=["label"])


def test_missing_target_names_it_and_lists_columns():
    frame = make_table(rows=30)
    with pytest.raises(ModelSphereError) as err:
        infer(frame, target="churn")
    message = str(err.value)
    assert "'churn'" in message
    assert "unit.csv" in message
    for name in frame.columns:
        assert repr(name) in message
    assert "delimiter" not in message


def test_missing_target_with_one_column_hints_at_the_delimiter():
    columns = ["a;b;label"]
    with pytest.raises(ModelSphereError) as err:
        infer_schema({}, columns, data_cfg(), "semi.csv")
    message = str(err.value)
    assert "'label'" in message
    assert "data.delimiter" in message
    assert "'a;b;label'" in message


def test_no_feature_columns_is_an_error():
    frame = pd.DataFrame({"label": ["a", "b"] * 5})
    with pytest.raises(ModelSphereError, match="no usable feature"):
        infer(frame)


# ----------------------------------------------------------------------------
# Target and task


def test_single_class_target_is_an_error():
    frame = labelled()
    frame["label"] = "yes"
    with pytest.raises(ModelSphereError, match=r"'label' has a single class \['yes'\]"):
        infer(frame)


def test_target_without_values_is_an_error():
    frame = labelled()
    frame["label"] = None
    with pytest.raises(ModelSphereError, match="'label' has no values"):
        infer(frame)


@pytest.mark.parametrize(
    "labels, task, classes, kind",
    [
        (["yes", "no"], "binary", ["no", "yes"], "string"),
        (["b", "a", "c"], "multiclass", ["a", "b", "c"], "string"),
        (["0", "1"], "binary", [0, 1], "int"),
        (["3", "1", "2", "2.0"], "multiclass", [1, 2, 3], "int"),
        (["0.5", "1.25", "2"], "regression", None, "float"),
    ],
)
def test_task_inference(labels, task, classes, kind):
    frame = labelled(n=40)
    frame["label"] = [labels[i % len(labels)] for i in range(40)]
    schema = infer(frame)
    assert schema.task == task
    assert schema.classes == classes
    assert schema.target_kind == kind
    assert schema.is_classification == (task != "regression")


def test_many_integer_values_are_regression_few_are_classes():
    frame = labelled(n=40)
    frame["label"] = [str(i % 12) for i in range(40)]
    assert infer(frame).task == "regression"
    assert infer(frame, max_inferred_classes=12).task == "multiclass"


def test_requested_binary_with_three_classes_is_an_error():
    frame = labelled()
    frame["label"] = [("a", "b", "c")[i % 3] for i in range(40)]
    with pytest.raises(ModelSphereError) as err:
        infer(frame, task="binary")
    message = str(err.value)
    assert "data.task=binary" in message
    assert "3 classes" in message
    assert "data.task=multiclass" in message


def test_requested_regression_on_text_target_names_row_and_value():
    frame = labelled()
    frame["label"] = [str(i) for i in range(40)]
    frame.loc[7, "label"] = "lots"
    with pytest.raises(ModelSphereError) as err:
        infer(frame, task="regression")
    assert "row 8" in str(err.value)
    assert "'lots'" in str(err.value)


def test_requested_classification_with_too_many_levels_is_an_error():
    frame = labelled(n=40)
    frame["label"] = [f"v{i}" for i in range(40)]
    stats = scan(frame, max_levels=10)
    with pytest.raises(ModelSphereError, match="too many distinct values"):
        infer_schema(stats, list(frame.columns), data_cfg(task="multiclass"), "u.csv")


def test_positive_class_goes_last():
    frame = labelled()
    assert infer(frame).classes == ["no", "yes"]
    assert infer(frame, positive_class="no").classes == ["yes", "no"]
    frame["label"] = [str(i % 2) for i in range(40)]
    assert infer(frame, positive_class="0").classes == [1, 0]


def test_invalid_positive_class_lists_the_classes():
    with pytest.raises(ModelSphereError) as err:
        infer(labelled(), positive_class="Yes")
    message = str(err.value)
    assert "data.positive_class='Yes'" in message
    assert "['no', 'yes']" in message


@pytest.mark.parametrize(
    "labels, task", [(["a", "b", "c"], "multiclass"), (["0.5", "1.5"], "regression")]
)
def test_positive_class_only_for_binary(labels, task):
    frame = labelled()
    frame["label"] = [labels[i % len(labels)] for i in range(40)]
    with pytest.raises(ModelSphereError, match="binary targets only"):
        infer(frame, positive_class=labels[0], task=task)


def test_schema_round_trips_through_dict():
    schema = infer(make_table(rows=60))
    assert Schema.from_dict(schema.to_dict()) == schema
    payload = schema.to_dict()
    payload["surprise"] = 1
    with pytest.raises(ModelSphereError, match="schema is malformed"):
        Schema.from_dict(payload)


def test_integer_labels_written_two_ways_are_one_class():
    """Labels "1" and "1.0" are one integer class, counted once for the task."""
    frame = labelled()
    frame["label"] = [("0", "1", "1.0", "0.0")[i % 4] for i in range(40)]
    schema = infer(frame)
    assert schema.classes == [0, 1]
    assert schema.task == "binary"


def test_one_integer_class_written_two_ways_is_a_single_class_error():
    frame = labelled()
    frame["label"] = [("1", "1.0")[i % 2] for i in range(40)]
    with pytest.raises(ModelSphereError, match="single class"):
        infer(frame)


def test_id_column_beyond_tracked_levels_is_not_a_categorical_feature():
    """With more distinct ids than data.max_tracked_levels (any table over 10k rows
    by default) uniqueness cannot be seen; a text id must still not become a
    categorical feature with one level per row."""
    frame = make_table(rows=40)
    stats = scan(frame, max_levels=10)
    schema = infer_schema(stats, list(frame.columns), data_cfg(), "big.csv")
    assert "customer_id" not in schema.categorical
    assert schema.categorical == ["plan", "region"]


def test_second_row_index_is_ignored_not_a_feature():
    """pandas' unnamed index beside R's rownames: both are row numbers."""
    frame = labelled(n=40)
    frame.insert(0, "unnamed_0", range(40))
    frame.insert(1, "rownames", range(1, 41))
    schema = infer(frame)
    assert schema.id_column == "unnamed_0"
    assert "rownames" in schema.ignored
    assert "rownames" not in schema.features
