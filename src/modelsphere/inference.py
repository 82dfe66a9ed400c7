"""The one predictor: used by training, evaluate.py, predict.py and the API.

A `Predictor` is built from a run dir's artifact. `predict_frame` checks a frame
against the model's schema, types it exactly as preprocessing did, applies the
fitted feature transform and returns one output row per input row:
the id column (if the input has it), the predicted label and one
`<class>_probability` column per class, or the predicted value for regression.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import torch

from .artifacts import Artifact, load_artifact
from .cleaning import clean_frame
from .devices import DeviceChoice, autocast
from .errors import ModelSphereError
from .features import transform_features
from .model import TabularMLP

log = logging.getLogger(__name__)

PREDICTION_COLUMN = "prediction"
PROBABILITY_SUFFIX = "_probability"


@torch.inference_mode()
def predict_outputs(
    model: TabularMLP,
    numeric: torch.Tensor,
    categorical: torch.Tensor,
    batch_size: int,
    device: DeviceChoice,
) -> torch.Tensor:
    """Raw model outputs (logits or standardised values), float32, in batches."""
    model.eval()
    chunks = []
    for start in range(0, numeric.shape[0], batch_size):
        with autocast(device):
            out = model(
                numeric[start : start + batch_size],
                categorical[start : start + batch_size],
            )
        chunks.append(out.float())
    if not chunks:
        return torch.zeros((0, model.spec.n_outputs), device=numeric.device)
    return torch.cat(chunks)


def outputs_to_scores(
    outputs: torch.Tensor, task: str, feature_state: Dict[str, Any]
) -> torch.Tensor:
    """Probabilities (P(positive) for binary, [n, k] for multiclass) or values."""
    if task == "binary":
        return torch.sigmoid(outputs[:, 0])
    if task == "multiclass":
        return torch.softmax(outputs, dim=1)
    target = feature_state["target"]
    return outputs[:, 0] * target["std"] + target["mean"]


class Predictor:
    """A trained model with its schema and feature state, ready to score rows."""

    def __init__(self, artifact: Artifact, device: DeviceChoice, batch_size: int):
        self.artifact = artifact
        self.device = device
        self.batch_size = batch_size
        self.schema = artifact.schema
        self.feature_state = artifact.feature_state
        self.model = artifact.build(device.device)
        self._announced: set = set()

    @classmethod
    def from_run_dir(
        cls, run_dir: str | Path, device: DeviceChoice, batch_size: int
    ) -> "Predictor":
        return cls(load_artifact(run_dir), device, batch_size)

    @property
    def task(self) -> str:
        return self.schema.task

    @property
    def classes(self) -> Optional[List[Any]]:
        return self.schema.classes

    @property
    def required_columns(self) -> List[str]:
        return self.schema.features

    def output_columns(self) -> List[str]:
        if self.task == "regression":
            return [PREDICTION_COLUMN]
        return [PREDICTION_COLUMN] + [
            f"{label}{PROBABILITY_SUFFIX}" for label in self.classes
        ]

    def check_columns(
        self, columns: List[str], where: str, labelled: bool = False
    ) -> None:
        """Missing feature columns are an error; extra columns are logged once."""
        missing = [name for name in self.required_columns if name not in columns]
        if missing:
            raise ModelSphereError(
                f"{where} lacks {len(missing)} column(s) the model needs: {missing}"
            )
        known = set(self.required_columns) | {self.schema.id_column}
        extra = [
            name for name in columns if name not in known and name != self.schema.target
        ]
        self._announce(
            "extra",
            extra,
            f"{where}: ignoring {len(extra)} column(s) the model does not use: "
            f"{extra[:20]}",
        )
        if self.schema.target in columns and not labelled:
            self._announce(
                "target",
                [1],
                f"{where}: the target column {self.schema.target!r} is ignored",
            )

    def _announce(self, key: str, items: List[Any], message: str) -> None:
        if items and key not in self._announced:
            self._announced.add(key)
            log.info(message)

    def prepare(
        self, frame: pd.DataFrame, where: str, row_offset: int = 0
    ) -> pd.DataFrame:
        """Check and type the feature columns (strict: text in a numeric column is an
        error; infinities become missing values, as in training, with a warning)."""
        self.check_columns(list(frame.columns), where)
        problems: Counter = Counter()
        cleaned = clean_frame(
            frame,
            self.schema,
            where,
            row_offset,
            strict=True,
            with_target=False,
            counts=problems,
        )
        for problem, count in sorted(problems.items()):
            log.warning(
                "%s: %s (%d value(s) treated as missing)", where, problem, count
            )
        return cleaned

    def scores(self, cleaned: pd.DataFrame) -> torch.Tensor:
        """Probabilities or values for already-prepared rows, on the CPU."""
        arrays = transform_features(cleaned, self.feature_state)
        numeric = torch.from_numpy(arrays.numeric).to(self.device.device)
        categorical = torch.from_numpy(arrays.categorical).to(self.device.device)
        outputs = predict_outputs(
            self.model, numeric, categorical, self.batch_size, self.device
        )
        return outputs_to_scores(outputs, self.task, self.feature_state).cpu()

    def predict_frame(
        self, frame: pd.DataFrame, where: str = "input", row_offset: int = 0
    ) -> pd.DataFrame:
        cleaned = self.prepare(frame, where, row_offset)
        scores = self.scores(cleaned).numpy()
        out: Dict[str, Any] = {}
        if self.schema.id_column is not None and self.schema.id_column in frame:
            out[self.schema.id_column] = frame[self.schema.id_column].to_numpy()
        if self.task == "regression":
            out[PREDICTION_COLUMN] = scores.astype(np.float64)
            return pd.DataFrame(out)
        probabilities = (
            np.column_stack([1.0 - scores, scores]) if self.task == "binary" else scores
        )
        labels = np.asarray(self.classes, dtype=object)[probabilities.argmax(axis=1)]
        out[PREDICTION_COLUMN] = _typed_labels(labels, self.schema.target_kind)
        for position, label in enumerate(self.classes):
            out[f"{label}{PROBABILITY_SUFFIX}"] = probabilities[:, position].astype(
                np.float64
            )
        return pd.DataFrame(out)


def _typed_labels(labels: np.ndarray, kind: str):
    if kind == "int":
        return labels.astype(np.int64)
    return pd.array(labels.astype(str), dtype="string")
