"""The `logger` section (`conf/logger/`): which run trackers a training run logs
to. A preset sets its own key, so several compose at once, e.g.
`logger=[csv,tensorboard,mlflow]`; a tracker whose key is null is off."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from modelsphere.core.config import require


@dataclass
class CsvLoggerConfig:
    # the run's epochs, one row each, rewritten after every epoch
    file: str = "epochs.csv"


@dataclass
class TensorBoardLoggerConfig:
    # null: <run dir>/tensorboard; `tensorboard --logdir outputs` shows every run
    log_dir: Optional[str] = None
    images: bool = True  # the run's plots as images


@dataclass
class MlflowLoggerConfig:
    # null: $MLFLOW_TRACKING_URI if set, else a file store in <outputs>/mlruns
    tracking_uri: Optional[str] = None
    experiment: str = "modelsphere"  # sweeps: one run per job, in this experiment
    # log the run dir's files (model, config, metrics, plots) as artifacts;
    # the checkpoint (resume state) stays in the run dir only
    artifacts: bool = True

    @staticmethod
    def check(node, key: str) -> None:
        require(bool(node.experiment.strip()), f"{key}.experiment must not be empty")


@dataclass
class LoggerConfig:
    csv: Optional[CsvLoggerConfig] = None
    tensorboard: Optional[TensorBoardLoggerConfig] = None
    mlflow: Optional[MlflowLoggerConfig] = None
