"""export.py: a run's model as one ONNX graph from raw columns to scores
(raw_graph.py), checked against the predictor before it is written.

The check scores a split of the run's own data (the test split by default) both
ways: the graph in a bare ONNX Runtime session, fed the columns as a user's
runtime would feed them, and `Predictor.predict_frame`. Probabilities must agree
within CHECK_TOLERANCE and labels exactly (a regression's predictions within
CHECK_TOLERANCE of their size); otherwise nothing is written. The file is
written atomically: an existing export is replaced whole or not at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pandas as pd
from onnx import TensorProto

from modelsphere.core.devices import select_device
from modelsphere.core.errors import ModelSphereError
from modelsphere.core.extras import require_extra, require_module
from modelsphere.core.fileio import atomic_write_bytes, atomic_write_json
from modelsphere.core.runs import ONNX_FILE, RAW_GRAPH_FILE, resolve_run_dir
from modelsphere.inference.config import PredictAppConfig, validate_export_app
from modelsphere.inference.engines import onnx_session
from modelsphere.inference.evaluation import run_split
from modelsphere.inference.predictor import Predictor
from modelsphere.inference.raw_graph import frame_feeds, output_names
from modelsphere.models.outputs import PREDICTION_COLUMN, PROBABILITY_SUFFIX

log = logging.getLogger(__name__)

CHECK_TOLERANCE = 1e-5
EXPORT_SUMMARY_FILE = "export.json"
GRAPH_SUFFIX = ".onnx"
CHECK_THREADS = 1


def run_export(cfg: Any, output_dir: str | Path) -> Dict[str, Any]:
    validate_export_app(cfg)
    require_extra("onnx", "export.py")
    run_dir = resolve_run_dir(cfg.run_dir, cfg.paths.outputs_dir)
    output = Path(cfg.output) if cfg.output else run_dir / RAW_GRAPH_FILE
    if output.suffix != GRAPH_SUFFIX:
        raise ModelSphereError(
            f"output={output}: an ONNX graph's file name ends in {GRAPH_SUFFIX}"
        )
    if output.resolve() == (run_dir / ONNX_FILE).resolve():
        raise ModelSphereError(
            f"output={output} is the ONNX engine's cache of the network graph; "
            f"write the raw-columns graph elsewhere (default: {RAW_GRAPH_FILE})"
        )
    predictor = Predictor.from_run_dir(
        run_dir, select_device("cpu"), PredictAppConfig.batch_size, engine="onnx"
    )
    model = _built(predictor)
    graph = model.SerializeToString()
    where = f"{cfg.check_split} split"
    check = check_raw_graph(
        graph, predictor, run_split(predictor, cfg.check_split), where
    )
    atomic_write_bytes(output, graph)
    summary = {
        "run_dir": str(run_dir),
        "output": str(output),
        "bytes": len(graph),
        "inputs": {item.name: _kind(item) for item in model.graph.input},
        "outputs": output_names(predictor.task),
        "check": {"split": cfg.check_split, **check},
    }
    atomic_write_json(Path(output_dir) / EXPORT_SUMMARY_FILE, summary)
    log.info(
        "wrote %s (%d inputs, one per feature column); on the %s it agrees with "
        "the predictor to %.2g (%d rows)",
        output,
        len(model.graph.input),
        where,
        check["max_difference"],
        check["rows"],
    )
    return summary


def _built(predictor: Predictor):
    """The predictor's raw-columns graph; ONNX's own errors (no common type)
    told as one line."""
    try:
        return predictor.raw_graph()
    except ModelSphereError:
        raise
    except Exception as exc:
        raise ModelSphereError(
            f"the raw-columns ONNX graph could not be built: {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _kind(item) -> str:
    is_text = item.type.tensor_type.elem_type == TensorProto.STRING
    return "string" if is_text else "double"


def check_raw_graph(
    graph: bytes, predictor: Predictor, frame: pd.DataFrame, where: str
) -> Dict[str, Any]:
    """Score `frame` with the graph and with the predictor; the largest
    difference, or a ModelSphereError when they disagree."""
    ort = require_module("onnxruntime", "onnx", "export.py")
    expected = predictor.predict_frame(frame, where)
    cleaned = predictor.prepare(frame, where)
    try:
        session = onnx_session(ort, graph, CHECK_THREADS)
        scored = session.run(None, frame_feeds(cleaned, predictor.schema))
    except Exception as exc:  # ONNX Runtime's errors have no common type
        raise ModelSphereError(
            f"ONNX Runtime could not run the raw-columns graph on the {where}: "
            f"{_first_line(exc)}; nothing was written"
        ) from exc
    outputs = dict(zip(output_names(predictor.task), scored))
    if predictor.task == "regression":
        want = expected[PREDICTION_COLUMN].to_numpy(dtype=np.float64)
        got = outputs[PREDICTION_COLUMN].astype(np.float64)
        difference = np.abs(got - want) / np.maximum(np.abs(want), 1.0)
        labels_differ = 0
    else:
        columns = [f"{c}{PROBABILITY_SUFFIX}" for c in predictor.classes]
        want = expected[columns].to_numpy(dtype=np.float64)
        got = outputs["probabilities"].astype(np.float64)
        difference = np.abs(got - want)
        labels = expected[PREDICTION_COLUMN].astype(object).to_numpy()
        labels_differ = int(np.sum(outputs["label"].astype(object) != labels))
    largest = float(np.max(difference, initial=0.0))
    if not largest <= CHECK_TOLERANCE or labels_differ:  # NaN fails too
        raise ModelSphereError(
            f"the raw-columns graph disagrees with the predictor on the {where}: "
            f"largest difference {largest:.3g} (tolerance {CHECK_TOLERANCE:g}), "
            f"{labels_differ} label(s) differ; nothing was written"
        )
    return {"rows": len(frame), "max_difference": largest}
