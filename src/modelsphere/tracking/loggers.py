"""The run trackers of one training run, as one object the loop calls.

`open_loggers` starts every tracker the `logger` section turns on (rank 0 only:
the other processes of a distributed run get none). The loop calls `epoch` after
each finished epoch with the whole history so far, and `finish` once with the
final metrics and the run dir's files. A tracker that cannot start stops the run
before training, naming the setting; one that fails later is logged and dropped,
so a tracking server going away does not cost a long run.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Protocol

from modelsphere.core.fileio import atomic_write_json, read_json
from modelsphere.core.runs import TRACKING_FILE

log = logging.getLogger(__name__)

STATUSES = ("completed", "interrupted", "failed")  # how a run ended


class RunLogger(Protocol):
    name: str

    def epoch(self, history: List[Dict[str, Any]]) -> None: ...

    def finish(
        self, final: Mapping[str, Mapping[str, float]], files: List[Path], status: str
    ) -> None: ...


class RunLoggers:
    """Every tracker of the run; each call goes to all that still work."""

    def __init__(self, loggers: List[RunLogger]):
        self.loggers = loggers

    @property
    def names(self) -> List[str]:
        return [logger.name for logger in self.loggers]

    def epoch(self, history: List[Dict[str, Any]]) -> None:
        self._each("log epoch %d" % history[-1]["epoch"], "epoch", history)

    def finish(
        self, final: Mapping[str, Mapping[str, float]], files: List[Path], status: str
    ) -> None:
        self._each(f"finish the run ({status})", "finish", final, files, status)
        self.loggers = []

    def _each(self, what: str, method: str, *args) -> None:
        for logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as exc:  # a tracker's failure never stops training
                log.warning(
                    "logger.%s could not %s, and is off for the rest of this run: "
                    "%s: %s",
                    logger.name,
                    what,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                self.loggers.remove(logger)


def read_tracking(run_dir: Path) -> Dict[str, Any]:
    """What the trackers recorded in the run dir to continue a resumed run."""
    path = run_dir / TRACKING_FILE
    return read_json(path, "the run's tracking record") if path.is_file() else {}


def write_tracking(run_dir: Path, record: Dict[str, Any]) -> None:
    atomic_write_json(run_dir / TRACKING_FILE, record)


@contextmanager
def open_loggers(
    settings,
    run_dir: Path,
    outputs_dir: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    active: bool,
    ended: Callable[[BaseException], str] = lambda exc: "failed",
) -> Iterator[RunLoggers]:
    """The run's trackers while training runs; a run that raises is finished
    with the status `ended(error)` gives (one of STATUSES), and the error goes
    on."""
    if not active:
        yield RunLoggers([])
        return
    loggers = RunLoggers(_start(settings, run_dir, outputs_dir, params, tags))
    if loggers.names:
        log.info("logging the run to %s", ", ".join(loggers.names))
    try:
        yield loggers
    except BaseException as exc:
        loggers.finish({}, [], ended(exc))
        raise


def _start(settings, run_dir, outputs_dir, params, tags) -> List[RunLogger]:
    started: List[RunLogger] = []
    record = read_tracking(run_dir)
    if settings.csv is not None:
        from modelsphere.tracking.csv_log import CsvLogger

        started.append(CsvLogger(run_dir / settings.csv.file))
    if settings.tensorboard is not None:
        from modelsphere.tracking.tensorboard_log import TensorBoardLogger

        started.append(
            TensorBoardLogger(
                Path(settings.tensorboard.log_dir or run_dir / "tensorboard"),
                params,
                settings.tensorboard.images,
            )
        )
    if settings.mlflow is not None:
        from modelsphere.tracking.mlflow_log import MlflowLogger

        mlflow_logger = MlflowLogger.start(
            settings.mlflow,
            outputs_dir,
            run_dir.name,
            params,
            tags,
            record.get("mlflow"),
        )
        record["mlflow"] = mlflow_logger.record()
        started.append(mlflow_logger)
    if record:
        write_tracking(run_dir, record)
    return started
