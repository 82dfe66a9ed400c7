"""Typing raw columns by the schema: numbers, category strings, labels.

One function serves preprocessing (lenient: a stray word in a numeric column
becomes a missing value and is counted) and prediction (strict: it is an error
naming the column, row and value), so both see the same values the same way.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from modelsphere.core.errors import ModelSphereError
from modelsphere.data.numbers import STRING_DTYPE, parse_numbers
from modelsphere.data.schema import Schema


def _strip_blank(values: pd.Series) -> pd.Series:
    values = values.astype(STRING_DTYPE).str.strip()
    return values.mask(values == "")


def _first_row(mask: pd.Series, row_offset: int) -> int:
    return row_offset + int(np.flatnonzero(mask.to_numpy())[0]) + 1


def to_numbers(
    values: pd.Series,
    column: str,
    where: str,
    row_offset: int = 0,
    strict: bool = False,
    counts: Optional[Counter] = None,
) -> pd.Series:
    """float64 values; text that is not a number is an error (strict) or missing."""
    if ptypes.is_bool_dtype(values) or ptypes.is_numeric_dtype(values):
        numbers = values.astype("float64")
    else:
        text = _strip_blank(values)
        numbers = parse_numbers(text)
        bad = text.notna() & numbers.isna()
        if bad.any():
            if strict:
                row = _first_row(bad, row_offset)
                value = str(text[bad].iloc[0])[:80]
                raise ModelSphereError(
                    f"{where}: column {column!r} must be numeric, but row {row} holds "
                    f"{value!r} ({int(bad.sum())} such value(s) in this chunk)"
                )
            if counts is not None:
                counts[f"{column}: text in a numeric column"] += int(bad.sum())
    nonfinite = np.isinf(numbers.to_numpy())
    if nonfinite.any():
        numbers = numbers.mask(nonfinite)
        if counts is not None:
            counts[f"{column}: infinite values"] += int(nonfinite.sum())
    return numbers


def to_categories(values: pd.Series) -> pd.Series:
    """Category levels as strings; integral numbers print without a trailing .0."""
    if ptypes.is_float_dtype(values):
        values = values.mask(
            np.isinf(values.to_numpy(dtype=np.float64, na_value=np.nan))
        )
        finite = values.dropna()
        if (finite == np.round(finite)).all():
            values = values.astype("Int64")
    if not (ptypes.is_string_dtype(values) or ptypes.is_object_dtype(values)):
        values = values.astype(STRING_DTYPE)
    return _strip_blank(values)


def to_labels(
    values: pd.Series, schema: Schema, where: str, row_offset: int = 0
) -> pd.Series:
    """Target values typed as in training (int or string labels, or float)."""
    if schema.target_kind == "float":
        return to_numbers(values, schema.target, where, row_offset, strict=True)
    if schema.target_kind == "int":
        numbers = to_numbers(values, schema.target, where, row_offset, strict=True)
        fractional = numbers.notna() & (numbers != np.round(numbers))
        if fractional.any():
            row = _first_row(fractional, row_offset)
            raise ModelSphereError(
                f"{where}: target {schema.target!r} row {row} is not a class label: "
                f"{numbers[fractional].iloc[0]}"
            )
        return numbers.astype("Int64")
    return _strip_blank(values)


def clean_frame(
    frame: pd.DataFrame,
    schema: Schema,
    where: str,
    row_offset: int = 0,
    strict: bool = False,
    with_target: bool = True,
    counts: Optional[Counter] = None,
) -> pd.DataFrame:
    """A typed copy of `frame` with the id, feature and (optionally) target columns."""
    out = {}
    if schema.id_column is not None and schema.id_column in frame:
        out[schema.id_column] = frame[schema.id_column]
    for name in schema.numeric:
        out[name] = to_numbers(frame[name], name, where, row_offset, strict, counts)
    for name in schema.categorical:
        out[name] = to_categories(frame[name])
    if with_target:
        out[schema.target] = to_labels(frame[schema.target], schema, where, row_offset)
    return pd.DataFrame(out, index=frame.index)


def category_text(value: Any) -> Optional[str]:
    """One category value as `to_categories` types a column: integral numbers
    without ".0", text stripped, blanks and NaN missing (None)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, float) and value == round(value):
        value = int(value)
    text = str(value).strip()
    return text or None


def clean_records(
    records: Sequence[Mapping[str, Any]], schema: Schema
) -> Dict[str, list]:
    """Feature columns from already type-checked records (the API's request models
    guarantee numbers or None for numeric fields), typed as `clean_frame` types a
    frame; numeric infinities become missing as in training."""
    columns: Dict[str, list] = {}
    for name in schema.numeric:
        values = [record.get(name) for record in records]
        columns[name] = [
            None if value is None or not math.isfinite(value) else float(value)
            for value in values
        ]
    for name in schema.categorical:
        columns[name] = [category_text(record.get(name)) for record in records]
    return columns
