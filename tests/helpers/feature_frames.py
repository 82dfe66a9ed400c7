"""Tiny feature-pipeline inputs for the unit tests: a schema of columns x, c and
target y, a cleaned frame of them, and FeatureConfig options."""

from __future__ import annotations

import pandas as pd
from omegaconf import OmegaConf

from modelsphere.data.schema import Schema
from modelsphere.features.config import FeatureConfig


def options(**overrides):
    return OmegaConf.structured(FeatureConfig(**overrides))


def make_schema(numeric=("x",), categorical=("c",), task="binary", classes=None):
    if classes is None and task != "regression":
        classes = ["no", "yes"] if task == "binary" else ["a", "b", "c"]
    kind = "float" if task == "regression" else "string"
    if classes and not isinstance(classes[0], str):
        kind = "int"
    return Schema(
        columns=[*numeric, *categorical, "y"],
        target="y",
        task=task,
        numeric=list(numeric),
        categorical=list(categorical),
        classes=classes,
        target_kind=kind,
    )


def frame(x=None, c=None, y=None, **extra) -> pd.DataFrame:
    """A cleaned frame: float64 numerics, string categoricals."""
    n = len(x if x is not None else c)
    out = {}
    if x is not None:
        out["x"] = pd.Series(x, dtype="float64")
    if c is not None:
        out["c"] = pd.Series(c, dtype="string")
    for name, values in extra.items():
        out[name] = values
    out["y"] = pd.Series(
        y if y is not None else ["no", "yes"] * (n // 2) + ["no"] * (n % 2)
    )
    return pd.DataFrame(out)
