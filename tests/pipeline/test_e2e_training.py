"""End to end in-process: determinism, resume, stale data, and every task.

Configs are composed as the entry points compose them, then `run_training`,
`run_evaluation` and `run_batch_prediction` run as train.py, evaluate.py and
predict.py would run them, all on tiny tables under tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from helpers import (
    compose_config,
    csv_overrides,
    make_table,
    run_cli_in_process,
    train_tiny,
)
from modelsphere.core.errors import ModelSphereError
from modelsphere.inference.batch_predict import run_batch_prediction
from modelsphere.inference.evaluation import run_evaluation
from modelsphere.training.run import run_training

TIMING = ("seconds", "rows_per_second")


def history(run_dir: Path):
    """metrics.json's per-epoch history without the wall-clock fields."""
    rows = json.loads((run_dir / "metrics.json").read_text())["history"]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def weights(run_dir: Path):
    return load_file(str(run_dir / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = weights(a), weights(b)
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def csv_of(base: Path, task: str = "binary") -> Path:
    """The CSV `train_tiny` wrote under `base`."""
    return base / f"tiny_{task}.csv"


# ----------------------------------------------------------------------------
# Determinism and resume


def test_same_seed_gives_identical_runs_and_another_seed_does_not(tmp_path):
    first = train_tiny(tmp_path, "train.plot=false", run_name="first")
    second = train_tiny(tmp_path, "train.plot=false", run_name="second")
    other = train_tiny(tmp_path, "train.plot=false", "seed=1", run_name="other")

    assert len(history(first)) == 2
    assert history(first) == history(second)
    assert_same_weights(first, second)
    final = [
        json.loads((run / "metrics.json").read_text())["final"]
        for run in (first, second)
    ]
    assert final[0] == final[1]

    left, right = weights(first), weights(other)
    assert left.keys() == right.keys()
    assert not all(torch.equal(left[name], right[name]) for name in left)


def test_resume_continues_exactly_where_the_run_stopped(tmp_path):
    constant = ["train.scheduler=constant", "train.plot=false"]
    full = train_tiny(tmp_path, "train.max_epochs=3", *constant, run_name="full")
    part = train_tiny(tmp_path, "train.max_epochs=2", *constant, run_name="part")
    assert len(history(part)) == 2

    # Only max_epochs (and device) come from the new config; the rest (here the
    # constant scheduler) must come from the resumed run's own config.yaml.
    cfg = compose_config(
        csv_overrides(csv_of(tmp_path), tmp_path, "binary")
        + ["train.max_epochs=3", f"train.resume={part}"]
    )
    elsewhere = tmp_path / "outputs" / "train" / "elsewhere"
    before = {path.name: path.read_bytes() for path in part.iterdir()}
    run_training(cfg, elsewhere)

    # The finished run is kept as it was: the continued run is a new run dir.
    assert {path.name: path.read_bytes() for path in part.iterdir()} == before
    assert [row["epoch"] for row in history(elsewhere)] == [1, 2, 3]
    assert history(elsewhere) == history(full)
    assert_same_weights(elsewhere, full)
    checkpoint = torch.load(elsewhere / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 3


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    run = train_tiny(tmp_path, "train.max_epochs=1", "train.plot=false")
    (run / "checkpoint.pt").unlink()
    cfg = compose_config(
        csv_overrides(csv_of(tmp_path), tmp_path, "binary")
        + ["train.max_epochs=2", f"train.resume={run}"]
    )
    with pytest.raises(ModelSphereError, match="checkpoint") as error:
        run_training(cfg, tmp_path / "outputs" / "train" / "resumed")
    assert str(run / "checkpoint.pt") in str(error.value)


def snapshot(run_dir: Path) -> dict:
    return {path.name: path.read_bytes() for path in sorted(run_dir.iterdir())}


def test_a_finished_run_is_not_resumed_unless_more_epochs_are_asked(tmp_path):
    run = train_tiny(tmp_path, "train.max_epochs=2", "train.plot=false")
    before = snapshot(run)
    base = csv_overrides(csv_of(tmp_path), tmp_path, "binary") + [f"train.resume={run}"]
    new_dir = tmp_path / "outputs" / "train" / "continued"
    given = [f"train.resume={run}"]
    # No train.max_epochs on the command line (the default, 200, must not apply).
    with pytest.raises(ModelSphereError, match="has finished") as error:
        run_training(compose_config(base), new_dir, overrides=given)
    assert "train.max_epochs above 2" in str(error.value)
    # Fewer or as many epochs as were done.
    for epochs in (1, 2):
        item = f"train.max_epochs={epochs}"
        with pytest.raises(ModelSphereError, match="has finished"):
            run_training(compose_config(base + [item]), new_dir, [*given, item])
    # An override a resumed run would drop is refused by name.
    extra = ["train.max_epochs=3", "train.lr=0.5", "model.dropout=0.3"]
    with pytest.raises(ModelSphereError, match="keeps its own config") as error:
        run_training(compose_config(base + extra), new_dir, [*given, *extra])
    assert "['train.lr=0.5', 'model.dropout=0.3']" in str(error.value)
    assert snapshot(run) == before and not new_dir.exists()
    # Overrides that repeat the run's own settings drop nothing: accepted.
    same = ["train.max_epochs=3", "train.plot=false", "model=mlp_small"]
    run_training(compose_config(base + same), new_dir, [*given, *same])
    assert [row["epoch"] for row in history(new_dir)] == [1, 2, 3]
    assert snapshot(run) == before


def test_resume_on_the_command_line_refuses_a_finished_run(tmp_path, capfd):
    """Through train.py's Hydra main: the overrides are the command line's."""
    run = train_tiny(tmp_path, "train.max_epochs=1", "train.plot=false")
    before = snapshot(run)
    common = [f"train.resume={run}", f"paths.outputs_dir={tmp_path / 'outputs'}"]
    result = run_cli_in_process(capfd, "train.py", *common, "device=cpu")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "has finished (1 epoch(s))" in result.stdout + result.stderr
    result = run_cli_in_process(capfd, "train.py", *common, "seed=3")
    assert result.returncode == 2
    assert "['seed=3'] would be ignored" in result.stdout + result.stderr
    assert snapshot(run) == before


# ----------------------------------------------------------------------------
# Preprocessing on demand


def test_training_rebuilds_stale_or_missing_splits(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="modelsphere")
    train_tiny(tmp_path, "train.max_epochs=1", "train.plot=false", run_name="one")
    processed = tmp_path / "data" / "processed" / "tiny_binary"
    assert (processed / "train.parquet").is_file()

    # The raw file changes: the next run must preprocess it again.
    make_table(rows=300, seed=5).to_csv(csv_of(tmp_path), index=False)
    caplog.clear()
    two = train_tiny(tmp_path, "train.max_epochs=1", "train.plot=false", run_name="two")
    assert "raw file changed" in caplog.text
    record = json.loads((two / "model.json").read_text())["data"]
    digest = hashlib.sha256(csv_of(tmp_path).read_bytes()).hexdigest()
    assert record["raw_sha256"] == digest
    assert sum(record["rows"].values()) == 300

    # A split file disappears: rebuilt too.
    (processed / "val.parquet").unlink()
    caplog.clear()
    train_tiny(tmp_path, "train.max_epochs=1", "train.plot=false", run_name="three")
    assert "split file missing" in caplog.text
    assert len(pd.read_parquet(processed / "val.parquet")) == record["rows"]["val"]


# ----------------------------------------------------------------------------
# Regression and multiclass: train -> evaluate -> predict


def evaluate(base: Path, run_dir: Path, *extra: str):
    cfg = compose_config(
        [
            f"run_dir={run_dir}",
            f"paths.outputs_dir={base / 'outputs'}",
            "device=cpu",
            *extra,
        ],
        config_name="evaluate",
    )
    out = base / "outputs" / "evaluate" / run_dir.name
    return run_evaluation(cfg, out), out


def predict(base: Path, run_dir: Path, frame: pd.DataFrame, *extra: str):
    source = base / "to_score.csv"
    frame.to_csv(source, index=False)
    output = base / "scored.parquet"
    cfg = compose_config(
        [
            f"run_dir={run_dir}",
            f"input={source}",
            f"output={output}",
            f"paths.outputs_dir={base / 'outputs'}",
            *extra,
        ],
        config_name="predict",
    )
    run_batch_prediction(cfg, base / "outputs" / "predict" / run_dir.name)
    return pd.read_parquet(output)


def assert_matches_training_metrics(report, run_dir: Path) -> None:
    """evaluate.py's metrics are training's own test metrics, to float32's
    precision (training scores with the trained model, evaluate with its
    folded inference form: the same function, sums in another order)."""
    expected = json.loads((run_dir / "metrics.json").read_text())["final"]["test"]
    for name, value in report["metrics"].items():
        assert value == pytest.approx(expected[name], rel=1e-6, abs=1e-6), name


def test_regression_end_to_end(tmp_path, caplog):
    run = train_tiny(tmp_path, task="regression")
    model = json.loads((run / "model.json").read_text())
    assert model["schema"]["task"] == "regression"

    report, eval_dir = evaluate(tmp_path, run)
    metrics = report["metrics"]
    assert set(metrics) == {"rmse", "mae", "r2", "rows"}
    assert 0 <= metrics["mae"] <= metrics["rmse"] and metrics["r2"] <= 1
    assert metrics["rows"] > 0
    assert_matches_training_metrics(report, run)
    assert (eval_dir / "residuals.png").stat().st_size > 0
    assert json.loads((eval_dir / "metrics.json").read_text()) == report

    caplog.set_level(logging.INFO, logger="modelsphere")
    table = make_table(task="regression", seed=3)
    scored = predict(tmp_path, run, table.drop(columns="label"), "device=auto")
    assert list(scored.columns) == ["customer_id", "prediction"]
    assert scored["customer_id"].tolist() == table["customer_id"].tolist()
    assert scored["prediction"].dtype == np.float64
    values = scored["prediction"].to_numpy()
    assert np.isfinite(values).all()
    # In the target's own units (about 50 +- 20), not the standardised scale.
    spread = table["label"].std()
    low, high = table["label"].min() - spread, table["label"].max() + spread
    assert ((values > low) & (values < high)).all(), (values.min(), values.max())
    if not torch.cuda.is_available():
        assert "device: cpu" in caplog.text
        assert "CUDA is not available" in caplog.text


def test_a_skewed_target_is_learned_on_the_log_scale_and_predicted_in_its_units(
    tmp_path,
):
    """A right-skewed positive target (a price): the skew rule (auto) picks log1p,
    the run saves
    Duan's smearing factor, and evaluate and predict invert both from the
    artifact, as training's own test metrics did."""
    table = make_table(rows=400, task="regression", seed=5)
    rng = np.random.default_rng(5)
    table["label"] = np.round(
        np.exp((table["label"] - 50) / 15 + 4) + rng.gamma(1, 5, 400), 2
    )
    table.to_csv(tmp_path / "tiny_regression.csv", index=False)
    run = train_tiny(
        tmp_path,
        "train.max_epochs=4",
        "model.features.target_transform=auto",
        task="regression",
    )
    target = json.loads((run / "model.json").read_text())["feature_state"]["target"]
    assert target["transform"] == "log1p"
    assert target["smearing"] > 0 and target["smearing"] != 1.0  # fitted

    report, _ = evaluate(tmp_path, run)
    assert_matches_training_metrics(report, run)

    # Duan's factor is the one that makes mean((1 + y) / (1 + y_hat)) = 1 on the
    # split it was fitted on (validation): predict.py applies exactly that one.
    (val_file,) = (tmp_path / "data").rglob("val.parquet")
    val = pd.read_parquet(val_file)
    scored = predict(tmp_path, run, val.drop(columns="label"))
    ratio = (1 + val["label"].to_numpy()) / (1 + scored["prediction"].to_numpy())
    assert ratio.mean() == pytest.approx(1.0, abs=1e-4)
    # in the target's units (median about 60), not log units (about 4)
    typical = np.median(scored["prediction"]) / np.median(val["label"])
    assert 0.5 < typical < 2, typical


def test_multiclass_end_to_end(tmp_path):
    run = train_tiny(tmp_path, task="multiclass")
    model = json.loads((run / "model.json").read_text())
    assert model["schema"]["task"] == "multiclass"
    assert model["schema"]["classes"] == [0, 1, 2]

    report, eval_dir = evaluate(tmp_path, run)
    metrics = report["metrics"]
    assert set(metrics) == {
        "accuracy",
        "macro_f1",
        "roc_auc",
        "log_loss",
        "brier",
        "ece",
        "rows",
    }
    for name in ("accuracy", "macro_f1", "roc_auc"):
        assert 0 <= metrics[name] <= 1, name
    assert metrics["log_loss"] > 0
    assert_matches_training_metrics(report, run)
    assert report["confusion_matrix"]["labels"] == ["0", "1", "2"]
    matrix = np.asarray(report["confusion_matrix"]["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == metrics["rows"]
    assert (eval_dir / "confusion_matrix.png").stat().st_size > 0
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["brier"] <= 2
    assert (eval_dir / "reliability.png").stat().st_size > 0

    # evaluate.py input=<labelled file>: integer labels read back from CSV text.
    labelled = make_table(task="multiclass", seed=3)
    labelled.to_csv(tmp_path / "labelled.csv", index=False)
    on_file, _ = evaluate(tmp_path, run, f"input={tmp_path / 'labelled.csv'}")
    assert on_file["metrics"]["rows"] == len(labelled)
    assert 0 <= on_file["metrics"]["accuracy"] <= 1

    scored = predict(tmp_path, run, labelled.drop(columns="label"), "device=cpu")
    probabilities = ["0_probability", "1_probability", "2_probability"]
    assert list(scored.columns) == ["customer_id", "prediction", *probabilities]
    assert scored["customer_id"].tolist() == labelled["customer_id"].tolist()
    assert scored["prediction"].dtype == np.int64
    assert set(scored["prediction"]) <= {0, 1, 2}
    np.testing.assert_allclose(scored[probabilities].sum(axis=1), 1.0, atol=1e-6)
    assert (
        scored["prediction"].to_numpy()
        == scored[probabilities].to_numpy().argmax(axis=1)
    ).all()


def test_evaluate_rebuilds_a_deleted_processed_folder(tmp_path):
    run = train_tiny(tmp_path, "train.plot=false")
    before, _ = evaluate(tmp_path, run, "plot=false")
    shutil.rmtree(tmp_path / "data" / "processed" / "tiny_binary")
    after, _ = evaluate(tmp_path, run, "plot=false")
    assert after["metrics"] == before["metrics"]
