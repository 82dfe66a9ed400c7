"""End to end through the four entry points, as a user runs them (subprocesses).

One module-scoped chain (preprocess -> train -> evaluate -> predict) on a tiny CSV
in a temp dir, plus a fresh-data-dir training run, a two-job sweep and the few bad
inputs that must prove "exit code 2, one error line, no traceback" on the CLI.
The other bad inputs are checked in-process in test_e2e_bad_inputs.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers import csv_overrides, make_table, run_cli

CUDA = torch.cuda.is_available()
USAGE_ERROR = 2


def output_of(result) -> str:
    return result.stdout + result.stderr


def assert_ok(result) -> str:
    text = output_of(result)
    assert result.returncode == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    return text


def assert_clean_failure(result, *fragments: str, code: int = USAGE_ERROR) -> str:
    """Exit `code`, one error line naming every fragment, no traceback."""
    text = output_of(result)
    assert result.returncode == code, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    errors = [line for line in text.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, text[-4000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def only_child(folder: Path) -> Path:
    children = [path for path in folder.iterdir() if not path.name.startswith(".")]
    assert len(children) == 1, children
    return children[0]


# ----------------------------------------------------------------------------
# The chain: data_preprocessing.py -> train.py -> evaluate.py -> predict.py


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    make_table().to_csv(base / "tiny.csv", index=False)
    return base


@pytest.fixture(scope="module")
def overrides(work):
    return csv_overrides(work / "tiny.csv", work)


@pytest.fixture(scope="module")
def preprocessed(work, overrides):
    return run_cli("data_preprocessing.py", *overrides)


@pytest.fixture(scope="module")
def trained(work, overrides, preprocessed):
    assert_ok(preprocessed)
    result = run_cli("train.py", *overrides, "train.max_epochs=2")
    assert_ok(result)
    return result, only_child(work / "outputs" / "train")


@pytest.fixture(scope="module")
def evaluated(work, trained):
    result = run_cli(
        "evaluate.py", f"paths.outputs_dir={work / 'outputs'}", "device=cpu"
    )
    assert_ok(result)
    return result, only_child(work / "outputs" / "evaluate")


@pytest.fixture(scope="module")
def unlabelled(work) -> Path:
    path = work / "unlabelled.csv"
    make_table(seed=7).drop(columns="label").to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def scored_parquet(work, trained, unlabelled):
    output = work / "scored" / "scored.parquet"
    result = run_cli(
        "predict.py",
        f"paths.outputs_dir={work / 'outputs'}",
        f"input={unlabelled}",
        f"output={output}",
    )
    return result, output


def test_preprocessing_writes_typed_splits_and_schema(work, preprocessed):
    assert_ok(preprocessed)
    processed = work / "data" / "processed" / "tiny"
    schema = json.loads((processed / "schema.json").read_text())
    assert schema["target"] == "label"
    assert schema["task"] == "binary"
    assert schema["id_column"] == "customer_id"
    assert schema["numeric"] == ["age", "income"]
    assert schema["categorical"] == ["plan", "region"]
    assert schema["classes"] == ["no", "yes"]
    splits = {
        split: pd.read_parquet(processed / f"{split}.parquet")
        for split in ("train", "val", "test")
    }
    assert sum(len(frame) for frame in splits.values()) == 240
    assert all(len(frame) > 0 for frame in splits.values())
    ids = [set(frame["customer_id"]) for frame in splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert splits["train"]["age"].dtype == np.float64
    assert set(splits["train"]["label"].dropna()) == {"no", "yes"}


def test_train_writes_a_complete_run_dir(work, trained):
    result, run_dir = trained
    text = output_of(result)
    assert "processed data is up to date" in text  # reuses the preprocessed splits
    assert run_dir.parent == work / "outputs" / "train"
    for name in (
        "model.safetensors",
        "model.json",
        "metrics.json",
        "config.yaml",
        "checkpoint.pt",
        "training_curve.png",
        ".hydra/config.yaml",
    ):
        assert (run_dir / name).is_file(), name
        assert (run_dir / name).stat().st_size > 0, name
    logs = list(run_dir.glob("*.log"))
    assert len(logs) == 1 and "epoch 2/2" in logs[0].read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert metrics["status"] == "completed"
    test = metrics["final"]["test"]
    assert 0.0 <= test["roc_auc"] <= 1.0 and 0.0 <= test["accuracy"] <= 1.0
    assert test["log_loss"] > 0 and test["rows"] > 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["max_epochs"] == 2
    assert saved["model"]["name"] == "mlp_small"
    latest = work / "outputs" / "latest"
    assert latest.is_symlink()
    assert latest.resolve() == run_dir.resolve()


def test_evaluate_reproduces_the_training_test_metrics(work, trained, evaluated):
    _, run_dir = trained
    result, eval_dir = evaluated
    assert eval_dir.parent == work / "outputs" / "evaluate"
    report = json.loads((eval_dir / "metrics.json").read_text())
    # model.json carries metrics.json's "final" block as its "metrics".
    expected = json.loads((run_dir / "metrics.json").read_text())["final"]["test"]
    recorded = json.loads((run_dir / "model.json").read_text())["metrics"]["test"]
    assert recorded == expected
    assert report["split"] == "test" and report["task"] == "binary"
    assert Path(report["run_dir"]).resolve() == run_dir.resolve()
    assert set(report["metrics"]) == set(expected) - {"loss"}
    for name, value in report["metrics"].items():
        assert value == pytest.approx(expected[name], abs=1e-6), name
    for name in (
        "roc_curve.png",
        "pr_curve.png",
        "reliability.png",
        "confusion_matrix.png",
    ):
        assert (eval_dir / name).stat().st_size > 0, name
    matrix = np.asarray(report["confusion_matrix"]["matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == expected["rows"]
    text = output_of(result)
    shown = f"{report['metrics']['roc_auc']:.4f}"
    assert re.search(r"^metric\s+value$", text, re.M), text
    assert re.search(rf"^roc_auc\s+{re.escape(shown)}$", text, re.M), text


def test_predict_csv_to_parquet(work, unlabelled, scored_parquet):
    result, output = scored_parquet
    text = assert_ok(result)
    if not CUDA:
        assert re.search(r"device: cpu .*CUDA is not available", text), text
    scored = pd.read_parquet(output)
    source = pd.read_csv(unlabelled)
    assert len(scored) == len(source) == 240
    assert list(scored.columns) == [
        "customer_id",
        "prediction",
        "no_probability",
        "yes_probability",
    ]
    assert scored["customer_id"].tolist() == source["customer_id"].tolist()
    yes, no = scored["yes_probability"], scored["no_probability"]
    assert ((yes >= 0) & (yes <= 1)).all()
    np.testing.assert_allclose(yes + no, 1.0, atol=1e-6)
    assert scored["prediction"].tolist() == np.where(yes > no, "yes", "no").tolist()
    summary = json.loads(
        (only_child(work / "outputs" / "predict") / "prediction.json").read_text()
    )
    assert summary["rows"] == 240
    assert not [p for p in output.parent.iterdir() if p.name != output.name]


def test_predict_parquet_to_csv(work, unlabelled, scored_parquet):
    _, first = scored_parquet
    source = work / "unlabelled.parquet"
    pd.read_csv(unlabelled).to_parquet(source)
    output = work / "scored" / "scored.csv"
    result = run_cli(
        "predict.py",
        f"paths.outputs_dir={work / 'outputs'}",
        f"input={source}",
        f"output={output}",
        "device=cpu",
    )
    assert_ok(result)
    scored = pd.read_csv(output)
    reference = pd.read_parquet(first)
    assert scored["customer_id"].tolist() == reference["customer_id"].tolist()
    assert scored["prediction"].tolist() == reference["prediction"].tolist()
    for name in ("no_probability", "yes_probability"):
        np.testing.assert_allclose(scored[name], reference[name], atol=1e-9)


def test_predict_engines_and_prefetch_agree(work, unlabelled, scored_parquet):
    """engine=auto (ONNX Runtime on the CPU) with the chunk prefetch, one and
    three forward passes at once, eager PyTorch two at once, and eager PyTorch
    one stage after the other, in small chunks: the same rows in the same
    order, the same labels, probabilities equal to float32 rounding."""
    outputs, logs = {}, {}
    for name, options in {
        "torch_in_turn": ["engine=torch", "prefetch_chunks=0"],
        "auto_prefetched": ["prefetch_chunks=2", "forward_workers=1", "threads=1"],
        "auto_parallel": ["prefetch_chunks=2", "forward_workers=3", "threads=1"],
        "torch_parallel": ["engine=torch", "forward_workers=2", "threads=1"],
    }.items():
        outputs[name] = work / "scored" / f"{name}.parquet"
        result = run_cli(
            "predict.py",
            f"paths.outputs_dir={work / 'outputs'}",
            f"input={unlabelled}",
            f"output={outputs[name]}",
            "device=cpu",
            "chunk_rows=50",
            *options,
        )
        logs[name] = assert_ok(result)
    assert "forward pass: 3 at once, 1 thread(s) each" in logs["auto_parallel"]
    assert "forward pass: 2 at once, 1 thread(s) each" in logs["torch_parallel"]
    eager, *fast_ones = (pd.read_parquet(path) for path in outputs.values())
    for fast in fast_ones:
        assert len(eager) == len(fast) == 240
        assert eager["customer_id"].tolist() == fast["customer_id"].tolist()
        assert eager["prediction"].tolist() == fast["prediction"].tolist()
        np.testing.assert_allclose(
            eager["yes_probability"], fast["yes_probability"], rtol=0, atol=1e-5
        )


def test_train_preprocesses_a_fresh_data_dir_itself(tmp_path, tiny_csv):
    overrides = csv_overrides(tiny_csv, tmp_path)
    assert not (tmp_path / "data").exists()
    result = run_cli("train.py", *overrides, "train.max_epochs=1")
    text = assert_ok(result)
    processed = tmp_path / "data" / "processed" / "tiny"
    for name in ("train.parquet", "val.parquet", "test.parquet", "schema.json"):
        assert (processed / name).is_file(), name
    assert "scanning" in text
    run_dir = only_child(tmp_path / "outputs" / "train")
    model = json.loads((run_dir / "model.json").read_text())
    assert model["data"]["processed_dir"] == str(processed.resolve())
    assert model["training"]["epochs_run"] == 1


def test_multirun_sweep_writes_one_dir_per_job(tmp_path, tiny_csv):
    overrides = csv_overrides(tiny_csv, tmp_path)
    result = run_cli(
        "train.py", "-m", "model.dropout=0.0,0.2", "train.max_epochs=1", *overrides
    )
    assert_ok(result)
    sweep = only_child(tmp_path / "outputs" / "multirun")
    jobs = sorted(path.name for path in sweep.iterdir() if path.is_dir())
    assert jobs == ["0", "1"]
    dropouts = []
    for job in jobs:
        assert (sweep / job / "model.json").is_file()
        saved = yaml.safe_load((sweep / job / "config.yaml").read_text())
        dropouts.append(saved["model"]["dropout"])
    assert dropouts == [0.0, 0.2]


# ----------------------------------------------------------------------------
# Bad inputs: exit code 2, one error line naming the problem, no traceback


def test_cli_missing_target_column(tmp_path, tiny_csv):
    result = run_cli(
        "train.py", *csv_overrides(tiny_csv, tmp_path), "data.target=churned"
    )
    assert_clean_failure(result, "'churned'", "not found")
    assert not list((tmp_path / "outputs").rglob("model.json"))


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
def test_cli_cuda_requested_without_cuda(tmp_path, tiny_csv):
    result = run_cli("train.py", *csv_overrides(tiny_csv, tmp_path), "device=cuda")
    assert_clean_failure(result, "device=cuda", "CUDA is not available")


def test_cli_predict_text_in_numeric_column(work, trained, unlabelled):
    frame = pd.read_csv(unlabelled).astype({"income": object})
    frame.loc[99, "income"] = "lots"
    bad = work / "bad_income.csv"
    frame.to_csv(bad, index=False)
    output = work / "bad_out" / "scored.parquet"
    result = run_cli(
        "predict.py",
        f"paths.outputs_dir={work / 'outputs'}",
        f"input={bad}",
        f"output={output}",
        "device=cpu",
    )
    assert_clean_failure(result, "'income'", "row 100", "'lots'")
    assert not output.exists()


def test_cli_evaluate_on_an_empty_run_dir(tmp_path):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    result = run_cli(
        "evaluate.py",
        f"run_dir={empty}",
        f"paths.outputs_dir={tmp_path / 'outputs'}",
        "device=cpu",
    )
    assert_clean_failure(result, str(empty), "model.json")


def test_cli_unknown_config_key_is_a_hydra_error(tmp_path, tiny_csv):
    result = run_cli(
        "train.py", *csv_overrides(tiny_csv, tmp_path), "train.learning_rate=0.1"
    )
    text = output_of(result)
    assert result.returncode == 1, text
    assert "Traceback" not in text, text
    assert "learning_rate" in text
    assert not (tmp_path / "outputs" / "train").exists()
