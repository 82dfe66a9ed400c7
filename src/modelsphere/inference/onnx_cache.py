"""Write a run's ONNX graph ahead of time, where predict.py and serve.py look
for it (`<run_dir>/model.onnx`, stamped with the hash of the weights it came
from), so a service started from a read-only copy of the run never exports:

    python -m modelsphere.inference.onnx_cache outputs/train/<run>

The container image runs it at build time (Dockerfile). Exits with status 2 and
one line when the run dir is not a usable run or the model does not export.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from modelsphere.core.devices import select_device
from modelsphere.core.errors import USAGE_ERROR_EXIT_CODE, ModelSphereError
from modelsphere.core.runs import ONNX_FILE
from modelsphere.inference.config import PredictAppConfig
from modelsphere.inference.predictor import Predictor

log = logging.getLogger(__name__)


def write_onnx_graph(run_dir: Path) -> Path:
    """Export (or confirm the cached export of) `run_dir`'s model; its path."""
    predictor = Predictor.from_run_dir(
        run_dir, select_device("cpu"), PredictAppConfig.batch_size, engine="onnx"
    )
    graph = Path(run_dir) / ONNX_FILE
    if predictor.engine.name != "onnx" or not graph.is_file():
        raise ModelSphereError(
            f"{run_dir}: no ONNX graph was written to {graph} (the log above "
            "says whether the export or the write failed); serve the run with "
            "serve.engine=torch"
        )
    return graph


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a training run dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        graph = write_onnx_graph(args.run_dir)
    except ModelSphereError as exc:
        log.error("error: %s", exc)
        return USAGE_ERROR_EXIT_CODE
    log.info("ONNX graph ready: %s", graph)
    return 0


if __name__ == "__main__":
    sys.exit(main())
