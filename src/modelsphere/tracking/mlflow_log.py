"""`logger=mlflow`: an MLflow run per training run, through MlflowClient (no
global active run, so several runs in one process stay apart).

The tracking store is `logger.mlflow.tracking_uri`, else $MLFLOW_TRACKING_URI,
else a local file store in <outputs>/mlruns. MLflow keeps its file store in
maintenance mode behind MLFLOW_ALLOW_FILE_STORE; its database store needs
SQLAlchemy 2, which the Optuna sweeper's pins exclude, so a file store URI opts
in for this process. A resumed training run continues its MLflow run (the id is
kept in the run dir's tracking record).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from modelsphere.core.errors import ModelSphereError
from modelsphere.tracking.run_record import epoch_scalars, final_scalars
from modelsphere.core.extras import require_module

MLRUNS = "mlruns"  # the local store, in paths.outputs_dir
FILE_STORE_OPT_IN = "MLFLOW_ALLOW_FILE_STORE"
BATCH_PARAMS = 100  # MLflow's limit of params per log_batch call
MAX_PARAM_CHARS = 6000  # MLflow's limit of a param value
RUN_STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


def tracking_uri(setting: Optional[str], outputs_dir: str) -> str:
    uri = setting or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return (Path(outputs_dir).resolve() / MLRUNS).as_uri()


def is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


class MlflowLogger:
    name = "mlflow"

    def __init__(self, client, run_id: str, uri: str, experiment_id: str):
        self.client, self.run_id = client, run_id
        self.uri, self.experiment_id = uri, experiment_id
        self.artifacts = True
        self.last_epoch = 0

    @classmethod
    def start(
        cls,
        settings,
        outputs_dir: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        previous: Optional[Dict[str, str]],
    ) -> "MlflowLogger":
        require_module("mlflow", "tracking", "logger.mlflow")
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(settings.tracking_uri, outputs_dir)
        if is_file_store(uri):
            os.environ.setdefault(FILE_STORE_OPT_IN, "true")
        try:
            client = MlflowClient(tracking_uri=uri)
            if previous and previous.get("tracking_uri") == uri:
                logger = cls(client, previous["run_id"], uri, previous["experiment_id"])
                client.update_run(logger.run_id, status="RUNNING")
            else:
                experiment_id = _experiment(client, settings.experiment)
                run = client.create_run(experiment_id, run_name=run_name, tags=tags)
                logger = cls(client, run.info.run_id, uri, experiment_id)
                logger._log_params(params)
        except ModelSphereError:
            raise
        except Exception as exc:
            raise ModelSphereError(
                f"logger.mlflow could not start a run at {uri} (logger.mlflow."
                f"tracking_uri or MLFLOW_TRACKING_URI): {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        logger.artifacts = settings.artifacts
        return logger

    def record(self) -> Dict[str, str]:
        return {
            "tracking_uri": self.uri,
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
        }

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [
            Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in params.items()
        ]
        for start in range(0, len(items), BATCH_PARAMS):
            self.client.log_batch(
                self.run_id, params=items[start : start + BATCH_PARAMS]
            )

    def _log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def epoch(self, history: List[Dict[str, Any]]) -> None:
        row = history[-1]
        self.last_epoch = int(row["epoch"])
        self._log_metrics(epoch_scalars(row), self.last_epoch)

    def finish(
        self, final: Mapping[str, Mapping[str, float]], files: List[Path], status: str
    ) -> None:
        if final:
            self._log_metrics(final_scalars(final), self.last_epoch)
        if self.artifacts:
            for path in files:
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status=RUN_STATUS[status])


def _experiment(client, name: str) -> str:
    """The experiment's id, created if new (sweep jobs running at once may race
    to create it: the loser finds the winner's)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
