"""Sweeps: grid multiruns, failed jobs, the leaderboard, Optuna, joblib, SLURM.

The end-to-end sweeps run train.py as a subprocess (Hydra's multirun needs the
CLI) on a tiny CSV with mlp_small for one epoch, everything under tmp_path. The
Optuna, joblib and submitit plugins come from requirements-sweeps.txt: without
them those tests are skipped, except in CI (CI=true), where they must run.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import List

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from helpers import CONFIG_DIR, csv_overrides, run_cli
from modelsphere import cli, sweeps
from modelsphere.training.interrupts import TrainingInterrupted

ONE_EPOCH = "train.max_epochs=1"


def needs_plugin(module: str):
    """Skip without the optional sweep plugins, but never in CI."""
    if os.environ.get("CI"):
        return
    pytest.importorskip(module, reason="pip install -r requirements-sweeps.txt")


def run_sweep(tmp_path: Path, tiny_csv: Path, *overrides: str):
    result = run_cli(
        "train.py", *overrides, ONE_EPOCH, *csv_overrides(tiny_csv, tmp_path)
    )
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    sweeps_dir = tmp_path / "outputs" / "multirun"
    (sweep,) = [path for path in sweeps_dir.iterdir() if path.is_dir()]
    return text, sweep


def read_summary(sweep: Path) -> List[dict]:
    with open(sweep / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def table_rows(sweep: Path) -> List[str]:
    lines = (sweep / "summary.md").read_text().splitlines()
    return [line for line in lines if line.startswith("| ")][1:]  # minus the header


def assert_completed_row(row: dict, sweep: Path) -> None:
    """A completed job's row holds its overrides and the metrics of its run dir."""
    job_dir = sweep / row["job"]
    metrics = json.loads((job_dir / "metrics.json").read_text())
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    assert row["status"] == "completed"
    assert row["overrides"] == " ".join(overrides)
    assert row["monitor"] == "val_roc_auc" and row["mode"] == "max"
    assert float(row["best"]) == pytest.approx(metrics["best"]["val_roc_auc"])
    for split in ("val", "test"):
        for name in ("roc_auc", "accuracy", "log_loss"):
            expected = metrics["final"][split][name]
            assert float(row[f"{split}_{name}"]) == pytest.approx(expected), name
    assert int(row["epochs"]) == metrics["training"]["epochs_run"] == 1
    assert float(row["train_seconds"]) > 0 and float(row["wall_seconds"]) > 0
    assert row["error"] == ""


def assert_sorted_best_first(rows: List[dict]) -> None:
    ranked = [row for row in rows if row["rank"]]
    assert [int(row["rank"]) for row in ranked] == list(range(1, len(ranked) + 1))
    values = [float(row["best"]) for row in ranked]
    assert values == sorted(values, reverse=True)  # roc_auc: higher is better


# ----------------------------------------------------------------------------
# Grid sweeps with Hydra's own sweeper and launcher


def test_grid_sweep_writes_a_sorted_leaderboard(tmp_path, tiny_csv):
    text, sweep = run_sweep(
        tmp_path,
        tiny_csv,
        "-m",
        "model.hidden_sizes=[16],[32,32]",
        "train.lr=1e-3,3e-3",
    )
    rows = read_summary(sweep)
    assert len(rows) == 4
    assert_sorted_best_first(rows)
    grid = {(row["model.hidden_sizes"], row["train.lr"]) for row in rows}
    assert grid == {
        ("[16]", "0.001"),
        ("[16]", "0.003"),
        ("[32,32]", "0.001"),
        ("[32,32]", "0.003"),
    }
    for row in rows:
        assert_completed_row(row, sweep)
        status = json.loads((sweep / row["job"] / "job_status.json").read_text())
        assert status["status"] == "completed"
        assert status["value"] == pytest.approx(float(row["best"]))
    markdown = (sweep / "summary.md").read_text()
    assert "4 jobs (4 completed)" in markdown
    assert "Sorted by val_roc_auc (max)" in markdown
    assert "`model.hidden_sizes`" in markdown and "`train.lr`" in markdown
    assert [line.split("|")[2].strip() for line in table_rows(sweep)] == [
        row["job"] for row in rows
    ]
    assert f"sweep leaderboard of 4 jobs: {sweep / 'summary.md'}" in text


def test_a_failed_job_is_listed_and_does_not_stop_the_sweep(tmp_path, tiny_csv):
    # The first job fails (train.lr=-1 is refused), the second still runs; the
    # sweep exits 0: it finished, and the leaderboard says which job failed.
    text, sweep = run_sweep(tmp_path, tiny_csv, "-m", "train.lr=-1,1e-3")
    assert "error: train.lr must be > 0, got -1.0" in text
    assert f"this sweep job failed; its output dir is {sweep / '0'}" in text
    assert (sweep / "1" / "model.json").is_file()
    status = json.loads((sweep / "0" / "job_status.json").read_text())
    assert status["status"] == "failed"
    assert status["error_type"] == "ModelSphereError"
    assert status["error"] == "train.lr must be > 0, got -1.0"
    assert "train.lr=-1" in status["overrides"]
    rows = read_summary(sweep)
    assert [(row["job"], row["status"], row["rank"]) for row in rows] == [
        ("1", "completed", "1"),
        ("0", "failed", ""),
    ]
    assert_completed_row(rows[0], sweep)
    assert rows[1]["train.lr"] == "-1" and rows[1]["best"] == ""
    assert rows[1]["error"] == "train.lr must be > 0, got -1.0"
    last = table_rows(sweep)[-1]
    assert "| failed |" in last and "train.lr must be > 0" in last


# ----------------------------------------------------------------------------
# Optional plugins: Optuna, joblib, submitit (SLURM)


def test_optuna_search_writes_its_results_and_the_leaderboard(tmp_path, tiny_csv):
    needs_plugin("hydra_plugins.hydra_optuna_sweeper")
    # hparams_search=optuna implies -m (hydra.mode: MULTIRUN).
    text, sweep = run_sweep(
        tmp_path, tiny_csv, "hparams_search=optuna", "hydra.sweeper.n_trials=3"
    )
    assert "Directions: ['maximize']" in text
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    searched = {
        "train.lr",
        "train.weight_decay",
        "model.hidden_sizes",
        "model.dropout",
        "train.batch_size",
    }
    assert set(results["best_params"]) == searched
    rows = read_summary(sweep)
    assert len(rows) == 3
    assert_sorted_best_first(rows)
    for row in rows:
        assert_completed_row(row, sweep)
    assert searched <= set(rows[0])  # one leaderboard column per searched key
    assert results["best_value"] == pytest.approx(float(rows[0]["best"]))
    best = {key: str(value) for key, value in results["best_params"].items()}
    assert {key: rows[0][key] for key in searched} == best


def test_optuna_search_goes_on_after_a_failed_trial(tmp_path, tiny_csv):
    needs_plugin("hydra_plugins.hydra_optuna_sweeper")
    # Only train.lr is searched; TPE's seeded random start draws both values.
    text, sweep = run_sweep(
        tmp_path,
        tiny_csv,
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.params=null",
        "train.lr=choice(-1,0.001)",
        "hydra.sweeper.n_trials=3",
    )
    assert "error: train.lr must be > 0, got -1.0" in text
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"train.lr": 0.001}
    rows = read_summary(sweep)
    assert {row["status"] for row in rows} == {"completed", "failed"}
    failed = [row for row in rows if row["status"] == "failed"]
    assert rows[-len(failed) :] == failed  # at the bottom
    assert all(row["train.lr"] == "-1" and row["error"] for row in failed)


def test_joblib_launcher_runs_jobs_in_parallel(tmp_path, tiny_csv):
    needs_plugin("hydra_plugins.hydra_joblib_launcher")
    text, sweep = run_sweep(
        tmp_path,
        tiny_csv,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "train.lr=1e-3,3e-3",
    )
    assert "Joblib.Parallel(n_jobs=2" in text
    rows = read_summary(sweep)
    assert len(rows) == 2
    assert_sorted_best_first(rows)
    for row in rows:
        assert_completed_row(row, sweep)
    # Each job ran in its own worker process, at the same time.
    statuses = [
        json.loads((sweep / job / "job_status.json").read_text()) for job in "01"
    ]
    assert statuses[0]["pid"] != statuses[1]["pid"]


def test_slurm_launcher_config_composes(tmp_path):
    needs_plugin("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import get_class

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert launcher.partition == "gpu"
    assert launcher.timeout_min > 0 and launcher.cpus_per_task >= 1
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    assert OmegaConf.to_container(launcher)["submitit_folder"].startswith(
        "${hydra.sweep.dir}"
    )
    assert cfg.hydra.callbacks.leaderboard._target_ == "modelsphere.sweeps.Leaderboard"


def test_multi_node_launcher_submits_one_job_of_one_task_per_gpu(tmp_path, monkeypatch):
    """hydra/launcher=slurm_ddp, turned into the sbatch script submitit would
    submit (as Hydra's SlurmLauncher maps its settings): nodes x GPUs tasks
    started by srun, each one training process, and USR2 before the limit."""
    needs_plugin("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra.utils import get_class
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    bin_dir = tmp_path / "bin"  # submitit looks for srun before it starts
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "hydra/launcher=slurm_ddp",
                "hydra.launcher.nodes=3",
                "hydra.launcher.tasks_per_node=2",
                f"hydra.sweep.dir={tmp_path}",
            ],
            return_hydra_config=True,
        )
    settings = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    launcher = get_class(settings.pop("_target_"))(**settings)
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(
        folder=params.pop("submitit_folder"),
        cluster="slurm",
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{k if k in base else f"slurm_{k}": v for k, v in params.items()}
    )
    script = executor._executor._make_submission_file_text("python job.py", "0")
    for line in (
        "#SBATCH --nodes=3",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --gpus-per-node=2",  # one GPU per task
        f"#SBATCH --signal=USR2@{params['signal_delay_s']}",
    ):
        assert line in script, script
    assert "\nsrun " in script
    assert executor._executor.max_num_timeout > 0  # requeued at the time limit


def test_optuna_preset_composes_a_search_space(tmp_path):
    needs_plugin("hydra_plugins.hydra_optuna_sweeper")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hparams_search=optuna", "hydra.sweeper.n_trials=7"],
            return_hydra_config=True,
        )
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.n_trials == 7
    assert sweeper.params["train.lr"].startswith("tag(log, interval(")
    assert sweeper.params["model.hidden_sizes"].startswith("choice([")
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.train.lr == 1e-3  # the preset changes hydra.* only


def test_sweep_pins_are_exact_and_inside_the_extra():
    """requirements-sweeps.txt pins one version of each package, within the ranges
    of pyproject's `sweeps` extra."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from packaging.requirements import Requirement

    repo = CONFIG_DIR.parent
    lines = (repo / "requirements-sweeps.txt").read_text().splitlines()
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            assert str(req.specifier).startswith("=="), line
            pins[req.name.lower()] = str(req.specifier)[2:]
    assert "-r requirements.txt" in lines
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    extra = [Requirement(r) for r in project["optional-dependencies"]["sweeps"]]
    assert extra
    for req in extra:
        assert req.specifier.contains(pins[req.name.lower()]), req


# ----------------------------------------------------------------------------
# The leaderboard from files, and the sweep-job wrapper, in-process


def fake_job(sweep: Path, job: str, overrides: List[str], **files) -> Path:
    job_dir = sweep / job
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    for name, payload in files.items():
        text = payload if isinstance(payload, str) else json.dumps(payload)
        (job_dir / f"{name}.json").write_text(text)
    return job_dir


def regression_metrics(rmse: float) -> dict:
    return {
        "status": "completed",
        "monitor": {"metric": "val_rmse", "mode": "min"},
        "best": {"epoch": 3, "val_rmse": rmse},
        "final": {
            "val": {"rmse": rmse, "mae": rmse / 2, "r2": 0.5, "loss": 1.0, "rows": 9},
            "test": {"rmse": rmse + 1, "mae": rmse, "r2": 0.4, "loss": 1.1, "rows": 9},
        },
        "training": {"epochs_run": 4, "seconds": 1.5},
    }


def test_leaderboard_sorts_a_minimised_metric_and_puts_failures_last(tmp_path):
    sweep = tmp_path / "sweep"
    fake_job(sweep, "0", ["seed=0"], job_status={"status": "failed", "error": "boom"})
    fake_job(sweep, "1", ["seed=1"], metrics=regression_metrics(3.0))
    fake_job(sweep, "2", ["seed=2"])  # killed before it wrote anything
    fake_job(sweep, "3", ["seed=3"], metrics=regression_metrics(2.0))
    fake_job(sweep, "10", ["seed=10"], metrics="{not json")
    fake_job(sweep, "11", ["seed=11"], metrics=regression_metrics(2.5))
    records = sweeps.write_leaderboard(sweep)
    assert [(r.job, r.status, r.rank) for r in records] == [
        ("3", "completed", 1),
        ("11", "completed", 2),
        ("1", "completed", 3),
        ("2", "unknown", None),
        ("10", "unknown", None),
        ("0", "failed", None),
    ]
    rows = read_summary(sweep)
    assert [row["seed"] for row in rows] == ["3", "11", "1", "2", "10", "0"]
    assert rows[0]["val_rmse"] == "2.0" and rows[0]["test_mae"] == "2.0"
    assert "val_rows" not in rows[0] and "test_rows" not in rows[0]
    assert "still running, was killed" in rows[3]["error"]
    assert "cannot read metrics.json" in rows[4]["error"]
    assert rows[5]["error"] == "boom"
    assert "Sorted by val_rmse (min)" in (sweep / "summary.md").read_text()


def test_leaderboard_callback_never_raises(tmp_path, caplog):
    board = sweeps.Leaderboard(job_names=["train"])
    with caplog.at_level(logging.WARNING):
        board.on_multirun_end(OmegaConf.create({}))  # no hydra node at all
        board.on_multirun_end(
            OmegaConf.create(
                {"hydra": {"job": {"name": "train"}, "sweep": {"dir": str(tmp_path)}}}
            )
        )
    assert "could not write the sweep leaderboard" in caplog.text
    assert "no sweep jobs found" in caplog.text
    assert not (tmp_path / "summary.csv").exists()
    # Sweeps of other entry points (evaluate.py, predict.py) get none.
    fake_job(tmp_path, "0", ["split=val"], job_status={"status": "completed"})
    board.on_multirun_end(
        OmegaConf.create(
            {"hydra": {"job": {"name": "evaluate"}, "sweep": {"dir": str(tmp_path)}}}
        )
    )
    assert not (tmp_path / "summary.csv").exists()


@pytest.fixture
def job_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(cli, "_job_overrides", lambda: ["train.lr=0.1"])
    return tmp_path


def test_sweep_job_records_an_unexpected_error_and_goes_on(job_dir, caplog):
    def task(cfg, output_dir):
        raise RuntimeError("disk on fire")

    with caplog.at_level(logging.ERROR, logger="modelsphere"):
        value = cli._sweep_job(task, None, job_dir)
    assert value is None  # a failed trial to Optuna; ignored by grid sweeps
    status = json.loads((job_dir / "job_status.json").read_text())
    assert status["status"] == "failed" and status["error"] == "disk on fire"
    assert status["error_type"] == "RuntimeError"
    assert status["overrides"] == ["train.lr=0.1"]
    traced = [record for record in caplog.records if record.exc_info]
    assert traced and "disk on fire" in traced[0].getMessage()
    assert f"its output dir is {job_dir}" in caplog.text


def test_sweep_job_interrupted_stops_the_sweep(job_dir):
    def task(cfg, output_dir):
        raise TrainingInterrupted("training interrupted by SIGTERM", 15)

    with pytest.raises(SystemExit) as stopped:
        cli._sweep_job(task, None, job_dir)
    assert stopped.value.code == 143
    status = json.loads((job_dir / "job_status.json").read_text())
    assert status["status"] == "interrupted"
    assert "SIGTERM" in status["error"]
