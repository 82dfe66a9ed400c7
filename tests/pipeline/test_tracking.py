"""Run trackers (`logger` group, src/modelsphere/tracking/): a run logged to
CSV, TensorBoard and MLflow is read back with each library's own reader; a sweep
logs one MLflow run per job under one experiment; an interrupted run's MLflow
run is continued when it resumes; a tracker that cannot start stops the run
before training, one that fails later is dropped with a warning."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, compose_config, csv_overrides, make_table, run_cli
from helpers.interrupts import interrupted_after
from modelsphere.core.errors import ModelSphereError
from modelsphere.tracking.loggers import RunLoggers
from modelsphere.tracking.run_record import flat_params
from modelsphere.training.interrupts import TrainingInterrupted
from modelsphere.training.run import run_training

pytestmark = pytest.mark.pipeline
mlflow = pytest.importorskip("mlflow")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
)

ALL = "logger=[csv,tensorboard,mlflow]"
EPOCHS = ["train.max_epochs=3", "train.early_stopping_patience=null"]


@pytest.fixture(autouse=True)
def file_store(monkeypatch):
    """The tests' MLflow stores are the runs' own <outputs>/mlruns."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


@pytest.fixture
def table(tmp_path) -> Path:
    path = tmp_path / "table.csv"
    make_table(rows=240).to_csv(path, index=False)
    return path


def config(table: Path, base: Path, *extra: str):
    return compose_config(csv_overrides(table, base) + EPOCHS + list(extra))


def client(base: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=(base / "outputs" / "mlruns").as_uri())


def runs(base: Path):
    store = client(base)
    return store.search_runs(
        [store.get_experiment_by_name("modelsphere").experiment_id]
    )


def assert_series(logged, expected) -> None:
    """(step, value) pairs: the same steps, the values within float32 rounding."""
    assert [step for step, _ in logged] == [step for step, _ in expected]
    assert [value for _, value in logged] == pytest.approx(
        [value for _, value in expected], rel=1e-6
    )


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def scalars(log_dir: Path, tag: str):
    events = event_accumulator.EventAccumulator(str(log_dir))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)], events


def test_a_run_logged_to_csv_tensorboard_and_mlflow_reads_back(table, tmp_path):
    run_dir = tmp_path / "outputs" / "train" / "tracked"
    run_training(config(table, tmp_path, ALL), run_dir)
    summary = metrics(run_dir)
    history = summary["history"]
    val_auc = [(row["epoch"], row["val_roc_auc"]) for row in history]

    with open(run_dir / "epochs.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["val_roc_auc"]) for r in rows] == [v for _, v in val_auc]
    assert [float(r["lr"]) for r in rows] == [row["lr"] for row in history]

    logged, events = scalars(run_dir / "tensorboard", "val/roc_auc")
    assert_series(logged, val_auc)
    test_auc, _ = scalars(run_dir / "tensorboard", "test/roc_auc")
    assert_series(test_auc, [(3, summary["final"]["test"]["roc_auc"])])
    assert "training_curve" in events.Tags()["images"]

    (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_epochs"] == "3"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert run.data.params == flat_params(saved)  # every setting, as saved
    history_auc = client(tmp_path).get_metric_history(run.info.run_id, "val_roc_auc")
    assert_series([(m.step, m.value) for m in history_auc], val_auc)
    assert run.data.metrics["test_roc_auc"] == pytest.approx(
        summary["final"]["test"]["roc_auc"]
    )
    assert run.data.metrics["best_val_roc_auc"] == pytest.approx(
        summary["final"]["val"]["roc_auc"]
    )
    artifacts = {a.path for a in client(tmp_path).list_artifacts(run.info.run_id)}
    assert {"model.safetensors", "model.json", "config.yaml", "metrics.json"} <= (
        artifacts
    )
    assert {"training_curve.png", "epochs.csv"} <= artifacts
    assert "checkpoint.pt" not in artifacts
    record = json.loads((run_dir / "tracking.json").read_text())
    assert record["mlflow"]["run_id"] == run.info.run_id


def test_csv_alone_is_the_default_and_writes_no_other_tracker(table, tmp_path):
    run_dir = tmp_path / "outputs" / "train" / "default"
    run_training(config(table, tmp_path), run_dir)
    assert (run_dir / "epochs.csv").is_file()
    assert not (run_dir / "tensorboard").exists()
    assert not (tmp_path / "outputs" / "mlruns").exists()


def test_a_sweep_logs_one_mlflow_run_per_job_under_one_experiment(table, tmp_path):
    result = run_cli(
        "train.py",
        "-m",
        *csv_overrides(table, tmp_path),
        "train.max_epochs=1",
        "logger=mlflow",
        "train.lr=0.001,0.01",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = runs(tmp_path)
    assert len(found) == 2
    assert {run.data.params["train.lr"] for run in found} == {"0.001", "0.01"}
    assert {run.data.tags["sweep_job"] for run in found} == {"0", "1"}
    (sweep_dir,) = {run.data.tags["sweep_dir"] for run in found}
    assert (Path(sweep_dir) / "summary.csv").is_file()
    assert all(run.info.status == "FINISHED" for run in found)


def test_an_interrupted_run_is_killed_and_continues_its_mlflow_run_on_resume(
    table, tmp_path, monkeypatch
):
    run_dir = tmp_path / "outputs" / "train" / "stopped"

    interrupted_after(monkeypatch, 30)  # in epoch 2
    with pytest.raises(TrainingInterrupted, match="epoch 2"):
        run_training(config(table, tmp_path, ALL, "train.batch_size=8"), run_dir)
    (run,) = runs(tmp_path)
    assert run.info.status == "KILLED"
    monkeypatch.undo()
    with open(run_dir / "epochs.csv", "a") as handle:  # killed after this write,
        handle.write("2,99\n")  # before the checkpoint of epoch 2
    resume = config(table, tmp_path, f"train.resume={run_dir}")
    run_training(resume, tmp_path / "x", overrides=[f"train.resume={run_dir}"])
    (resumed,) = runs(tmp_path)  # the run's own loggers, as the command says
    assert resumed.info.run_id == run.info.run_id
    assert resumed.info.status == "FINISHED"
    steps = [
        m.step
        for m in client(tmp_path).get_metric_history(run.info.run_id, "val_roc_auc")
    ]
    assert sorted(set(steps)) == [1, 2, 3]
    with open(run_dir / "epochs.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    history = metrics(run_dir)["history"]
    assert [float(r["train_loss"]) for r in rows] == [h["train_loss"] for h in history]


def test_a_tracker_that_cannot_start_stops_before_training(table, tmp_path):
    run_dir = tmp_path / "outputs" / "train" / "bad"
    cfg = config(
        table, tmp_path, "logger=mlflow", "+logger.mlflow.tracking_uri=nosuch://x"
    )
    with pytest.raises(ModelSphereError, match=r"logger.mlflow could not start"):
        run_training(cfg, run_dir)
    assert not (run_dir / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "tracker, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")]
)
def test_a_missing_tracker_package_names_the_extra(
    table, tmp_path, monkeypatch, tracker, module
):
    monkeypatch.setitem(sys.modules, module, None)  # importing it fails
    cfg = config(table, tmp_path, f"logger={tracker}")
    with pytest.raises(
        ModelSphereError, match=rf"logger.{tracker} needs the .*\[tracking\]"
    ):
        run_training(cfg, tmp_path / "outputs" / "train" / "missing")


class Broken:
    name = "broken"

    def __init__(self):
        self.calls = 0

    def epoch(self, history):
        self.calls += 1
        raise ConnectionError("tracking server went away")

    def finish(self, final, files, status):
        self.calls += 1


class Recording:
    name = "recording"

    def __init__(self):
        self.calls = []

    def epoch(self, history):
        self.calls.append(("epoch", history[-1]["epoch"]))

    def finish(self, final, files, status):
        self.calls.append(("finish", status))


def test_a_tracker_that_fails_mid_run_is_dropped_and_the_others_go_on(caplog):
    good, broken = Recording(), Broken()
    loggers = RunLoggers([broken, good])
    loggers.epoch([{"epoch": 1}])
    loggers.epoch([{"epoch": 1}, {"epoch": 2}])
    loggers.finish({}, [], "completed")
    assert good.calls == [("epoch", 1), ("epoch", 2), ("finish", "completed")]
    assert broken.calls == 1  # dropped after its failure
    assert "logger.broken could not log epoch 1" in caplog.text
    assert "tracking server went away" in caplog.text


def test_no_tracker_package_is_imported_by_the_default_run(tmp_path):
    """csv is the default: training imports neither mlflow nor tensorboard."""
    code = (
        "import sys; import modelsphere.training.run; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('mlflow', 'tensorboard')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert out.stdout.strip() == "[]", out.stderr
