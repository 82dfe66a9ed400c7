"""The data profile written beside the splits: rows, class counts per split,
missing shares, ranges and top levels per column (profile.json + profile.md)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict

from modelsphere.data.schema import Schema
from modelsphere.data.splits import SPLITS, iter_split_columns


def _class_counts(path: Path, schema: Schema, fmt: str) -> Dict[str, int]:
    counts: Counter = Counter()
    for frame in iter_split_columns(path, schema, fmt, [schema.target]):
        counts.update(frame[schema.target].value_counts().to_dict())
    return {str(label): int(counts[label]) for label in sorted(counts)}


def profile_of(schema, stats, counts, staging, fmt, n_rows) -> Dict[str, Any]:
    roles = {name: "numeric" for name in schema.numeric}
    roles.update({name: "categorical" for name in schema.categorical})
    roles.update({name: f"ignored ({why})" for name, why in schema.ignored.items()})
    roles[schema.target] = f"target ({schema.task})"
    if schema.id_column:
        roles[schema.id_column] = "id"
    profile: Dict[str, Any] = {
        "rows": n_rows,
        "dropped_missing_target": counts["dropped_missing_target"],
        "split_rows": counts["rows"],
        "values_made_missing": counts["problems"],
        "columns": {
            name: _column_profile(name, roles, stats) for name in schema.columns
        },
    }
    if schema.is_classification:
        profile["class_counts"] = {
            split: _class_counts(staging / f"{split}.{fmt}", schema, fmt)
            for split in SPLITS
        }
    return profile


def _column_profile(name, roles, stats) -> Dict[str, Any]:
    role = roles.get(name, "unused")
    column = {"role": role, **stats[name].profile()}
    if not (role == "categorical" or role.startswith("target")):
        column.pop("top_levels", None)
    if role == "categorical" or role.startswith("target ("):
        for key in ("min", "max", "mean", "std"):
            column.pop(key, None)
    return column


def profile_markdown(profile: Dict[str, Any]) -> str:
    lines = [
        "# Data profile",
        "",
        f"Rows: {profile['rows']} (dropped for a missing target: "
        f"{profile['dropped_missing_target']}); "
        + ", ".join(
            f"{split}: {rows}" for split, rows in profile["split_rows"].items()
        ),
        "",
    ]
    if "class_counts" in profile:
        lines += ["Class counts per split: " + json.dumps(profile["class_counts"]), ""]
    lines += [
        "| column | role | missing | distinct | min | mean | max | top levels |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value):
        return (
            ""
            if value is None
            else f"{value:.4g}" if isinstance(value, float) else str(value)
        )

    for name, col in profile["columns"].items():
        top = ", ".join(
            f"{level} ({count})" for level, count in col.get("top_levels", {}).items()
        )
        lines.append(
            f"| {name} | {col['role']} | {col['missing_fraction']:.1%} "
            f"| {fmt(col['distinct'])} | {fmt(col.get('min'))} "
            f"| {fmt(col.get('mean'))} | {fmt(col.get('max'))} | {top} |"
        )
    return "\n".join(lines) + "\n"
