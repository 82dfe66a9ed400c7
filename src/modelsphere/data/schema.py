"""The table's schema: which column is the target, which are features, and of what kind.

`ColumnStats` accumulates what a streaming scan of the raw CSV sees in each column;
`infer_schema` turns those statistics plus the user's explicit column roles into a
`Schema`, which is saved as `schema.json` and travels inside every model artifact.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from modelsphere.core.errors import ModelSphereError
from modelsphere.data.numbers import parse_numbers

log = logging.getLogger(__name__)

# Whole names like "id" or "rownames" (any case), "*_id", or camelCase "customerID".
ID_NAME_PATTERN = re.compile(
    r"(?i:^(id|rownames|index|unnamed_\d+)$|_id$)|[a-z0-9](Id|ID)$"
)
# Past `data.max_tracked_levels`, a column is "nearly unique" if at least this share
# of the values seen up to then were distinct.
TASKS = ("binary", "multiclass", "regression")
NEAR_UNIQUE_SHARE = 0.5
MIN_ROWS_FOR_UNIQUE_TEXT_AS_ID = 20
TOP_LEVELS_IN_PROFILE = 5


@dataclass
class ColumnStats:
    """Running statistics of one raw column (values seen as stripped strings)."""

    name: str
    n_rows: int = 0
    n_missing: int = 0
    n_numeric: int = 0
    n_integer: int = 0
    n_nonfinite: int = 0
    first_text_row: Optional[int] = None
    first_text_value: Optional[str] = None
    total: float = 0.0
    total_sq: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    levels: Dict[str, int] = field(default_factory=dict)
    levels_overflow: bool = False
    distinct_share_at_overflow: float = 0.0

    @property
    def n_present(self) -> int:
        return self.n_rows - self.n_missing

    @property
    def nearly_unique(self) -> bool:
        """Every value distinct (or, past the tracking cap, most values distinct)."""
        if self.levels_overflow:
            return self.distinct_share_at_overflow >= NEAR_UNIQUE_SHARE
        return self.n_present > 0 and len(self.levels) == self.n_present

    @property
    def numeric_share(self) -> float:
        return self.n_numeric / self.n_present if self.n_present else 0.0

    def update(self, values: pd.Series, row_offset: int, max_levels: int) -> None:
        """Fold one batch of string values (NA = missing) into the statistics."""
        values = values.str.strip()
        present = values.notna() & (values != "")
        self.n_rows += len(values)
        self.n_missing += int((~present).sum())
        text = values[present]
        numbers = parse_numbers(text)
        parsed = numbers.notna()
        self.n_numeric += int(parsed.sum())
        if self.first_text_row is None and not parsed.all():
            position = int(np.flatnonzero(~parsed.to_numpy())[0])
            self.first_text_row = row_offset + int(text.index[position]) + 1
            self.first_text_value = str(text.iloc[position])[:80]
        finite = numbers[parsed].to_numpy()
        is_finite = np.isfinite(finite)
        self.n_nonfinite += int((~is_finite).sum())
        finite = finite[is_finite]
        if finite.size:
            self.n_integer += int((finite == np.round(finite)).sum())
            self.total += float(finite.sum())
            self.total_sq += float(np.square(finite).sum())
            self.minimum = min(self.minimum, float(finite.min()))
            self.maximum = max(self.maximum, float(finite.max()))
        if not self.levels_overflow:
            self._count_levels(text.value_counts(sort=False), max_levels)

    def _count_levels(self, counts: pd.Series, max_levels: int) -> None:
        n_levels = len(self.levels) + len(counts)
        if n_levels > max_levels and self.levels:  # levels seen before count once
            n_levels -= int(counts.index.isin(list(self.levels)).sum())
        if n_levels > max_levels:  # (without merging counts level by level)
            self.levels_overflow = True
            self.distinct_share_at_overflow = n_levels / self.n_present
            self.levels = {}
            return
        for level, count in counts.items():
            self.levels[level] = self.levels.get(level, 0) + int(count)

    def profile(self) -> Dict[str, Any]:
        """A short, JSON-able description for the data profile."""
        out: Dict[str, Any] = {
            "missing": self.n_missing,
            "missing_fraction": (
                round(self.n_missing / self.n_rows, 6) if self.n_rows else 0
            ),
            "distinct": None if self.levels_overflow else len(self.levels),
        }
        n_finite = self.n_numeric - self.n_nonfinite
        if n_finite:
            mean = self.total / n_finite
            variance = max(self.total_sq / n_finite - mean * mean, 0.0)
            out.update(
                min=self.minimum, max=self.maximum, mean=mean, std=math.sqrt(variance)
            )
        if self.levels and not self.levels_overflow:
            top = sorted(self.levels.items(), key=lambda item: (-item[1], item[0]))
            out["top_levels"] = dict(top[:TOP_LEVELS_IN_PROFILE])
        return out


@dataclass
class Schema:
    """Column roles and the target's task; plain data, saved as JSON."""

    columns: List[str]
    target: str
    task: str
    numeric: List[str]
    categorical: List[str]
    id_column: Optional[str] = None
    ignored: Dict[str, str] = field(default_factory=dict)
    classes: Optional[List[Any]] = None
    target_kind: str = "float"  # float (regression) | int | string (class labels)

    @property
    def features(self) -> List[str]:
        return self.numeric + self.categorical

    @property
    def is_classification(self) -> bool:
        return self.task != "regression"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Dict[str, Any]) -> "Schema":
        try:
            return cls(**payload)
        except TypeError as exc:
            raise ModelSphereError(f"schema is malformed: {exc}") from exc


def _classes_from_levels(stats: ColumnStats) -> tuple[List[Any], str]:
    labels = list(stats.levels)
    if stats.n_numeric == stats.n_present and stats.n_integer == stats.n_present:
        values = sorted({int(float(label)) for label in labels})
        return values, "int"
    return sorted(labels), "string"


def _guess_task(target: ColumnStats, n_classes: int, max_classes: int) -> str:
    """Numbers with many values or fractions: regression; otherwise classes."""
    numeric = target.n_present > 0 and target.n_numeric == target.n_present
    many_levels = target.levels_overflow or n_classes > max_classes
    fractional = target.n_integer < target.n_numeric
    if numeric and (many_levels or fractional):
        return "regression"
    return "binary" if n_classes == 2 else "multiclass"


def _infer_task(target: ColumnStats, requested: Optional[str], max_classes: int) -> str:
    if target.n_present == 0:
        raise ModelSphereError(f"target column {target.name!r} has no values")
    classes = [] if target.levels_overflow else _classes_from_levels(target)[0]
    task = requested or _guess_task(target, len(classes), max_classes)
    if requested is None:
        log.info(
            "target %r: task inferred as %s (set data.task to change)",
            target.name,
            task,
        )
    if task == "regression":
        if target.n_numeric < target.n_present:
            raise ModelSphereError(
                f"target column {target.name!r} is not numeric (row "
                f"{target.first_text_row} holds {target.first_text_value!r}); "
                "regression needs numbers: fix the value or use data.task=multiclass"
            )
        if target.n_nonfinite:
            raise ModelSphereError(
                f"target column {target.name!r} holds {target.n_nonfinite} infinite "
                "value(s); remove them"
            )
        return task
    if target.levels_overflow:
        raise ModelSphereError(
            f"target column {target.name!r} has too many distinct values for "
            "classification; if it is a number to predict, set data.task=regression"
        )
    if len(classes) < 2:
        raise ModelSphereError(
            f"target column {target.name!r} has a single class {classes}: "
            "classification needs at least two"
        )
    if task == "binary" and len(classes) != 2:
        raise ModelSphereError(
            f"data.task=binary but target column {target.name!r} has {len(classes)} "
            f"classes {classes[:10]}; use data.task=multiclass"
        )
    return task


def _check_named(columns: List[str], names, key: str, path: str) -> List[str]:
    names = list(names or [])
    unknown = [name for name in names if name not in columns]
    if unknown:
        raise ModelSphereError(
            f"{key} names column(s) {unknown} that {path} does not have; "
            f"its columns are {columns}"
        )
    return names


def infer_schema(
    stats: Dict[str, ColumnStats],
    columns: List[str],
    data_cfg: Any,
    path: str,
) -> Schema:
    """Decide column roles from scan statistics and the user's explicit choices."""
    target = data_cfg.target
    if target not in columns:
        hint = ""
        if len(columns) == 1:
            hint = " (only one column was found: is data.delimiter right?)"
        raise ModelSphereError(
            f"target column {target!r} not found in {path}{hint}; "
            f"columns are {columns}"
        )
    numeric = _check_named(columns, data_cfg.numeric, "data.numeric", path)
    categorical = _check_named(columns, data_cfg.categorical, "data.categorical", path)
    ignore = _check_named(columns, data_cfg.ignore, "data.ignore", path)
    id_column = data_cfg.id_column
    if id_column is not None:
        _check_named(columns, [id_column], "data.id_column", path)
    overlap = (set(numeric) & set(categorical)) | (
        {target} & set(numeric + categorical)
    )
    if overlap:
        raise ModelSphereError(f"column(s) {sorted(overlap)} are given two roles")

    ignored: Dict[str, str] = {name: "listed in data.ignore" for name in ignore}
    explicit = set(numeric) | set(categorical) | set(ignore) | {target}
    for name in columns:
        if name in explicit or name == id_column:
            continue
        col = stats[name]
        id_like = col.nearly_unique and col.n_missing == 0
        if id_like and ID_NAME_PATTERN.search(name):
            if id_column is None:
                id_column = name
                log.info("column %r looks like an identifier: the id column", name)
            else:
                # A second row index (e.g. pandas' unnamed index beside R's
                # rownames) would leak the row order into the model.
                ignored[name] = f"another identifier besides {id_column!r}"
            continue
        if col.n_present == 0:
            ignored[name] = "all values missing"
        elif len(col.levels) == 1 and col.n_missing == 0 and not col.levels_overflow:
            ignored[name] = "constant"
        elif col.numeric_share >= data_cfg.numeric_threshold:
            numeric.append(name)
        elif col.nearly_unique and col.n_present >= MIN_ROWS_FOR_UNIQUE_TEXT_AS_ID:
            ignored[name] = "every value is unique text (an identifier?)"
        else:
            categorical.append(name)
    for name, reason in ignored.items():
        log.info("column %r ignored: %s", name, reason)

    target_stats = stats[target]
    task = _infer_task(target_stats, data_cfg.task, data_cfg.max_inferred_classes)
    classes, target_kind = None, "float"
    if task != "regression":
        classes, target_kind = _classes_from_levels(target_stats)
        classes = _order_classes(classes, task, data_cfg.positive_class, target)
    elif data_cfg.positive_class is not None:
        raise ModelSphereError("data.positive_class applies to binary targets only")
    order = {name: position for position, name in enumerate(columns)}
    schema = Schema(
        columns=list(columns),
        target=target,
        task=task,
        numeric=sorted(numeric, key=order.get),
        categorical=sorted(categorical, key=order.get),
        id_column=id_column,
        ignored=ignored,
        classes=classes,
        target_kind=target_kind,
    )
    if not schema.features:
        raise ModelSphereError(
            f"{path} has no usable feature columns besides the target"
        )
    return schema


def _order_classes(
    classes: List[Any], task: str, positive: Any, target: str
) -> List[Any]:
    """Binary: the positive class goes last (index 1: its probability is the score)."""
    if positive is None:
        return classes
    if task != "binary":
        raise ModelSphereError("data.positive_class applies to binary targets only")
    matches = [label for label in classes if str(label) == str(positive)]
    if not matches:
        raise ModelSphereError(
            f"data.positive_class={positive!r} is not a class of {target!r}: {classes}"
        )
    return [label for label in classes if label != matches[0]] + matches
