"""The one predictor: used by training, evaluate.py, predict.py and the API.

A `Predictor` is built from a run dir's artifact. It types its input exactly as
preprocessing did, applies the fitted feature transform and runs the model through
an engine (eager PyTorch, or ONNX Runtime for low per-call overhead). Two entry
points share every step after typing:

- `predict_frame` (predict.py, evaluate.py): a DataFrame in, a DataFrame out with
  the id column (if the input has it), `prediction` (the label, or the value for
  regression) and one `<class>_probability` column per class;
- `predict_records` (the API): already type-checked records in, one dict per
  record out, without pandas' per-call overhead (a single row costs microseconds,
  not milliseconds).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from modelsphere.core.devices import DeviceChoice
from modelsphere.core.errors import ModelSphereError, RowError
from modelsphere.data.cleaning import clean_frame, clean_records
from modelsphere.features.transform import FeatureArrays, FeatureTransform
from modelsphere.inference.engines import make_engine
from modelsphere.models.artifact import Artifact, load_artifact
from modelsphere.models.outputs import (
    PREDICTION_COLUMN,
    PROBABILITY_SUFFIX,
    outputs_to_scores,
)

log = logging.getLogger(__name__)

ROWS_SHOWN = 5  # row numbers an error lists before "and N more"
# Requests of up to this many records are scored by the raw-columns graph; larger
# ones by the Python transform + network graph, faster from a few hundred rows on
# (benchmarks/results/raw_graph.md, "by request size": the graph well ahead at
# 1 record, slightly at 64, behind at 512).
RECORDS_GRAPH_MAX_ROWS = 128


@dataclass
class PreparedRows:
    """Rows checked, typed and transformed, ready for the forward pass."""

    rows: int
    ids: Optional[np.ndarray]  # the id column's values, if the input has it
    arrays: FeatureArrays
    where: str = "input"  # the input's name, for errors
    row_offset: int = 0  # rows of the input before these


@dataclass
class ScoredRows:
    """Rows after the forward pass: probabilities (or values), ids kept."""

    rows: int
    ids: Optional[np.ndarray]
    scores: np.ndarray


def graph_stamp(weights_sha256: Optional[str], model: torch.nn.Module) -> Optional[str]:
    """What a cached ONNX graph must have been exported from: these weights in
    this inference form and its graph layout (a graph of the unfolded MLP, or
    of an earlier layout of the form, computes the same function more slowly,
    so it is exported again rather than reused)."""
    if weights_sha256 is None:
        return None
    layout = getattr(model, "graph_layout", None)
    form = type(model).__name__ + (f"+{layout}" if layout else "")
    return f"{weights_sha256}/{form}"


class Predictor:
    """A trained model with its schema and feature state, ready to score rows."""

    def __init__(
        self,
        artifact: Artifact,
        device: DeviceChoice,
        batch_size: int,
        engine: str = "torch",
        threads: int = 1,
    ):
        self.artifact = artifact
        self.device = device
        self.batch_size = batch_size
        self.schema = artifact.schema
        self.feature_state = artifact.feature_state
        self.transform = FeatureTransform(artifact.feature_state)
        self.model = artifact.build(device.device)
        self.engine = make_engine(
            engine,
            self.model,
            artifact.spec,
            device,
            batch_size,
            threads,
            artifact.run_dir,
            graph_stamp(artifact.meta.get("weights_sha256"), self.model),
        )
        # the records' graph, built on the first records (predict.py never
        # needs it; the API's warm-up builds it before the first request)
        self.threads = threads
        self._raw: Optional[Any] = None
        self._raw_built = self.engine.name != "onnx"  # the graph wraps its network
        self._raw_lock = threading.Lock()
        self._announced: set = set()

    def raw_graph(self):
        """The ONNX graph (a ModelProto) from raw columns to scores
        (raw_graph.py); needs the ONNX engine, whose network graph it wraps."""
        # onnx is an optional extra: imported only where the ONNX engine runs
        import onnx

        from modelsphere.inference.raw_graph import build_raw_graph

        if self.engine.name != "onnx":
            raise ModelSphereError(
                "the raw-columns ONNX graph wraps the ONNX engine's network graph, "
                "and this model runs on engine=torch (see the log for why)"
            )
        network = onnx.load_model_from_string(self.engine.graph)
        return build_raw_graph(network, self.schema, self.feature_state)

    @property
    def raw_scorer(self):
        """The raw-columns graph's scorer (a RawGraphScorer), or None: records
        are then scored by the Python transform and the engine."""
        if not self._raw_built:
            with self._raw_lock:
                if not self._raw_built:
                    self._raw = self._build_raw_scorer(self.threads)
                    self._raw_built = True
        return self._raw

    @raw_scorer.setter
    def raw_scorer(self, scorer) -> None:
        self._raw, self._raw_built = scorer, True

    def _build_raw_scorer(self, threads: int):
        """With the ONNX engine, records are scored by one run of the raw-columns
        graph; if it cannot be built, by the transform and the engine (None).
        Only asked with the ONNX engine (`_raw_built` is set otherwise)."""
        from modelsphere.inference.raw_graph import RawGraphScorer

        try:
            return RawGraphScorer(self.raw_graph(), self.schema, threads)
        except Exception as exc:  # ONNX's and ONNX Runtime's errors: no common type
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning(
                "the raw-columns ONNX graph could not be built (%s); records are "
                "scored by the feature transform and the network graph",
                reason[:200],
            )
            return None

    @classmethod
    def from_run_dir(
        cls,
        run_dir: str | Path,
        device: DeviceChoice,
        batch_size: int,
        engine: str = "torch",
        threads: int = 1,
    ) -> "Predictor":
        return cls(load_artifact(run_dir), device, batch_size, engine, threads)

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

    def check_flat(self, nested: Mapping[str, str], where: str) -> None:
        """A column the model needs must hold one value per cell: a nested one
        (a Parquet list or struct) would be scored as an unseen level in every row."""
        needed = {
            name: kind for name, kind in nested.items() if name in self.schema.features
        }
        if needed:
            name, kind = next(iter(needed.items()))
            raise ModelSphereError(
                f"{where}: column {name!r} is of the nested type {kind}; the model "
                "needs one string or number per cell (nested columns the model "
                f"needs: {sorted(needed)})"
            )

    def _announce(
        self, key: str, items: List[Any], message: str, level: int = logging.INFO
    ) -> None:
        if items and key not in self._announced:
            self._announced.add(key)
            log.log(level, message)

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
        empty = [name for name in self.schema.features if cleaned[name].isna().all()]
        self._announce(
            f"all-missing {where}",
            empty if len(cleaned) > 1 else [],
            f"{where}: every value of {empty} is missing (in rows {row_offset + 1}-"
            f"{row_offset + len(cleaned)}); scored as missing values, as in training",
            level=logging.WARNING,
        )
        return cleaned

    def _scores(self, arrays: FeatureArrays) -> np.ndarray:
        """Probabilities or values; a row whose score is not finite is an error,
        never a NaN probability in the output."""
        outputs = self.engine(arrays.numeric, arrays.categorical)
        scores = outputs_to_scores(outputs, self.task, self.feature_state).numpy()
        finite = np.isfinite(scores)
        if not finite.all():
            bad = ~finite if finite.ndim == 1 else ~finite.all(axis=1)
            positions = np.flatnonzero(bad).tolist()
            raise RowError(
                f"the model's output is not finite (NaN or infinite) for "
                f"{len(positions)} row(s); is the model artifact damaged?",
                positions,
            )
        return scores

    def _transform(
        self, cleaned: pd.DataFrame, where: str, row_number: Callable[[int], int]
    ) -> FeatureArrays:
        """The feature transform, a RowError told as `where` and data row numbers
        (`row_number`: a position in `cleaned` to its data row number)."""
        try:
            return self.transform.transform(cleaned, len(cleaned))
        except RowError as exc:
            raise ModelSphereError(_located(exc, where, row_number)) from None

    def scores(self, cleaned: pd.DataFrame, where: str = "input") -> torch.Tensor:
        """Probabilities or values for already-prepared rows, on the CPU (the
        frame's index is the 0-based position of each row in the input)."""

        def row_number(position: int) -> int:
            return int(cleaned.index[position]) + 1

        arrays = self._transform(cleaned, where, row_number)
        try:
            return torch.from_numpy(self._scores(arrays))
        except RowError as exc:
            raise ModelSphereError(_located(exc, where, row_number)) from None

    def _outputs(self, scores: np.ndarray, typed: bool = True) -> Dict[str, Any]:
        """`prediction` (+ one probability array per class), one entry per row;
        `typed`: labels as a pandas string or int64 column (else a plain array)."""
        if self.task == "regression":
            return {PREDICTION_COLUMN: scores.astype(np.float64)}
        if self.task == "binary":
            probabilities = np.column_stack([1.0 - scores, scores])
        else:
            probabilities = scores
        labels = np.asarray(self.classes, dtype=object)[probabilities.argmax(axis=1)]
        if typed:
            labels = _typed_labels(labels, self.schema.target_kind)
        out = {PREDICTION_COLUMN: labels}
        for position, label in enumerate(self.classes):
            out[f"{label}{PROBABILITY_SUFFIX}"] = probabilities[:, position].astype(
                np.float64
            )
        return out

    def prepare_rows(
        self, frame: pd.DataFrame, where: str = "input", row_offset: int = 0
    ) -> PreparedRows:
        """Everything before the forward pass (predict.py runs it a chunk ahead)."""
        cleaned = self.prepare(frame, where, row_offset)
        ids = None
        if self.schema.id_column is not None and self.schema.id_column in frame:
            ids = frame[self.schema.id_column].to_numpy()
        arrays = self._transform(cleaned, where, _counted_from(row_offset))
        return PreparedRows(len(frame), ids, arrays, where, row_offset)

    def forward(self, prepared: PreparedRows) -> ScoredRows:
        """The forward pass (predict.py runs it in its own thread)."""
        try:
            scores = self._scores(prepared.arrays)
        except RowError as exc:
            row_number = _counted_from(prepared.row_offset)
            raise ModelSphereError(_located(exc, prepared.where, row_number)) from None
        return ScoredRows(prepared.rows, prepared.ids, scores)

    def finish(self, scored: ScoredRows) -> pd.DataFrame:
        """The id column (if given), `prediction` and the class probabilities."""
        out: Dict[str, Any] = {}
        if scored.ids is not None:
            out[self.schema.id_column] = scored.ids
        out.update(self._outputs(scored.scores))
        return pd.DataFrame(out)

    def score_prepared(self, prepared: PreparedRows) -> pd.DataFrame:
        return self.finish(self.forward(prepared))

    def predict_frame(
        self, frame: pd.DataFrame, where: str = "input", row_offset: int = 0
    ) -> pd.DataFrame:
        return self.score_prepared(self.prepare_rows(frame, where, row_offset))

    def predict_records(
        self, records: Sequence[Mapping[str, Any]]
    ) -> Dict[str, np.ndarray]:
        """Column arrays (`prediction`, `<class>_probability`...) for records whose
        fields were type-checked by the API's request models: one run of the
        raw-columns graph for a request of up to RECORDS_GRAPH_MAX_ROWS records,
        the Python transform + network graph for a larger one."""
        scorer = self.raw_scorer if len(records) <= RECORDS_GRAPH_MAX_ROWS else None
        if scorer is not None:
            out = scorer(records)
            if out is not None:  # else a score is not finite: told below
                return out
        columns = clean_records(records, self.schema)
        arrays = self.transform.transform(columns, len(records))
        return self._outputs(self._scores(arrays), typed=False)

    def warm_up(self) -> None:
        """A forward pass on each path records take (the raw-columns graph, built
        here, and the transform + engine of larger requests), so the first request
        does not pay for lazy set-up."""
        self.predict_records([{}])
        columns = clean_records([{}], self.schema)
        self._scores(self.transform.transform(columns, 1))


def _counted_from(row_offset: int) -> Callable[[int], int]:
    """Data row numbers of rows that follow `row_offset` rows of the input."""
    return lambda position: row_offset + position + 1


def _located(error: RowError, where: str, row_number: Callable[[int], int]) -> str:
    """`error` told with the data row numbers of its positions (the first five)."""
    positions = error.positions
    shown = ", ".join(str(row_number(p)) for p in positions[:ROWS_SHOWN])
    extra = len(positions) - ROWS_SHOWN
    more = f" and {extra} more" if extra > 0 else ""
    return f"{where}: row(s) {shown}{more}: {error}"


def _typed_labels(labels: np.ndarray, kind: str):
    if kind == "int":
        return labels.astype(np.int64)
    return pd.array(labels.astype(str), dtype="string")
