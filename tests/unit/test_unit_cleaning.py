"""cleaning.py: typing raw columns, strictly (prediction) or leniently (preprocess)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from modelsphere.core.errors import ModelSphereError
from modelsphere.data.cleaning import clean_frame, to_categories, to_labels, to_numbers
from modelsphere.data.schema import Schema


def make_schema(target_kind: str = "string", **kwargs) -> Schema:
    task = {"string": "binary", "int": "multiclass", "float": "regression"}
    defaults = dict(
        columns=["id", "age", "plan", "notes", "label"],
        target="label",
        task=task[target_kind],
        numeric=["age"],
        categorical=["plan"],
        id_column="id",
        ignored={"notes": "listed in data.ignore"},
        classes=None if target_kind == "float" else ["a", "b"],
        target_kind=target_kind,
    )
    defaults.update(kwargs)
    return Schema(**defaults)


def text(values) -> pd.Series:
    return pd.Series(values, dtype="string")


def test_numbers_from_padded_strings_and_blanks():
    out = to_numbers(text([" 1.5", "2 ", "", "   ", None, "-3e2"]), "age", "f.csv")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(
        out.to_numpy(), [1.5, 2.0, np.nan, np.nan, np.nan, -300.0]
    )


def test_strict_mode_names_where_column_row_and_value():
    values = text(["1", "2", "forty", "x"])
    with pytest.raises(ModelSphereError) as err:
        to_numbers(values, "age", "new.csv", row_offset=100, strict=True)
    message = str(err.value)
    assert message.startswith("new.csv:")
    assert "'age'" in message
    assert "row 103" in message
    assert "'forty'" in message
    assert "2 such value(s)" in message


def test_lenient_mode_makes_text_missing_and_counts_it():
    counts: Counter = Counter()
    out = to_numbers(text(["1", "forty", "x", "4"]), "age", "f", counts=counts)
    np.testing.assert_array_equal(out.to_numpy(), [1.0, np.nan, np.nan, 4.0])
    assert counts == Counter({"age: text in a numeric column": 2})
    # counts accumulate over chunks
    to_numbers(text(["y"]), "age", "f", row_offset=4, counts=counts)
    assert counts["age: text in a numeric column"] == 3


@pytest.mark.parametrize("strict", [False, True])
def test_infinite_values_become_missing_and_are_counted(strict):
    counts: Counter = Counter()
    out = to_numbers(
        text(["inf", "-inf", "1", "Infinity"]), "x", "f", strict=strict, counts=counts
    )
    np.testing.assert_array_equal(out.to_numpy(), [np.nan, np.nan, 1.0, np.nan])
    assert counts["x: infinite values"] == 3


def test_numeric_dtypes_pass_through_and_inf_is_masked():
    out = to_numbers(pd.Series([1, 2, 3]), "x", "f")
    assert out.dtype == np.float64
    assert out.tolist() == [1.0, 2.0, 3.0]
    floats = to_numbers(pd.Series([np.inf, 0.5]), "x", "f", strict=True)
    assert np.isnan(floats.iloc[0]) and floats.iloc[1] == 0.5
    flags = to_numbers(pd.Series([True, False]), "x", "f")
    assert flags.tolist() == [1.0, 0.0]


def test_categories_format_integral_numbers_without_trailing_zero():
    out = to_categories(pd.Series([1.0, 20.0, np.nan]))
    assert out.iloc[0] == "1" and out.iloc[1] == "20"
    assert pd.isna(out.iloc[2])
    assert to_categories(pd.Series([3, 4])).tolist() == ["3", "4"]
    assert to_categories(pd.Series([1.5, 2.25])).tolist() == ["1.5", "2.25"]


def test_categories_strip_text_and_blank_is_missing():
    out = to_categories(pd.Series([" basic ", "", "  ", None, "plus"], dtype=object))
    assert out.iloc[0] == "basic" and out.iloc[4] == "plus"
    assert out.iloc[1:4].isna().all()


def test_categories_from_floats_with_infinity_do_not_crash():
    """A float column (e.g. from a Parquet input) may hold inf: not an OverflowError."""
    out = to_categories(pd.Series([1.0, np.inf, np.nan]))
    assert out.iloc[0] == "1"
    assert pd.isna(out.iloc[2])
    assert len(out) == 3


def test_labels_int():
    schema = make_schema("int", classes=[1, 2, 3])
    out = to_labels(text(["1", " 2 ", "3.0", None]), schema, "f")
    assert str(out.dtype) == "Int64"
    assert out.iloc[:3].tolist() == [1, 2, 3]
    assert pd.isna(out.iloc[3])


def test_labels_int_fractional_value_is_an_error_naming_the_row():
    schema = make_schema("int", classes=[1, 2])
    with pytest.raises(ModelSphereError) as err:
        to_labels(text(["1", "2", "2.5"]), schema, "eval.csv", row_offset=10)
    assert "row 13" in str(err.value)
    assert "2.5" in str(err.value)
    assert "'label'" in str(err.value)


def test_labels_int_text_is_an_error():
    schema = make_schema("int", classes=[1, 2])
    with pytest.raises(ModelSphereError, match=r"row 2 holds 'two'"):
        to_labels(text(["1", "two"]), schema, "f")


def test_labels_string_are_stripped():
    out = to_labels(text([" a", "b ", "", None]), make_schema("string"), "f")
    assert out.iloc[:2].tolist() == ["a", "b"]
    assert out.iloc[2:].isna().all()


def test_labels_float():
    schema = make_schema("float")
    out = to_labels(text(["1.25", "-2", ""]), schema, "f")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out.to_numpy(), [1.25, -2.0, np.nan])
    with pytest.raises(ModelSphereError, match="'label' must be numeric"):
        to_labels(text(["1.25", "high"]), schema, "f")


def test_clean_frame_keeps_id_features_target_and_drops_the_rest():
    frame = pd.DataFrame(
        {
            "id": ["r1", "r2"],
            "age": ["40", "x"],
            "plan": [" basic", ""],
            "notes": ["n1", "n2"],
            "label": ["a", "b"],
        },
        dtype="string",
    )
    counts: Counter = Counter()
    out = clean_frame(frame, make_schema(), "f", counts=counts)
    assert list(out.columns) == ["id", "age", "plan", "label"]
    assert out["age"].iloc[0] == 40.0 and np.isnan(out["age"].iloc[1])
    assert out["plan"].iloc[0] == "basic" and pd.isna(out["plan"].iloc[1])
    assert counts["age: text in a numeric column"] == 1
    without = clean_frame(frame.drop(columns=["id"]), make_schema(), "f", strict=False)
    assert "id" not in without.columns
    no_target = clean_frame(frame, make_schema(), "f", with_target=False)
    assert "label" not in no_target.columns
    with pytest.raises(ModelSphereError, match="row 2 holds 'x'"):
        clean_frame(frame, make_schema(), "f", strict=True)
