"""Bad inputs, in-process: each is a ModelSphereError whose message names the
problem, and a failed prediction never damages an existing output file.

test_e2e_cli.py proves for a few of these that the CLI turns the error into exit
code 2 and one line without a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import compose_config, csv_overrides, make_table
from modelsphere.core.errors import ModelSphereError
from modelsphere.inference.batch_predict import run_batch_prediction
from modelsphere.inference.evaluation import run_evaluation
from modelsphere.training.run import run_preprocessing, run_training

PROBABILITIES = ["no_probability", "yes_probability"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, trained_runs) -> Path:
    base = tmp_path_factory.mktemp("bad_inputs")
    return trained_runs.copy("binary_one_epoch", base)


def features(seed: int = 11) -> pd.DataFrame:
    return make_table(seed=seed).drop(columns="label")


def predict(run_dir: Path, source: Path, output: Path, *extra: str):
    cfg = compose_config(
        [
            f"run_dir={run_dir}",
            f"input={source}",
            f"output={output}",
            f"paths.outputs_dir={run_dir.parents[1]}",
            "device=cpu",
            *extra,
        ],
        config_name="predict",
    )
    return run_batch_prediction(cfg, source.parent / "predict_run")


def write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------
# Training-side inputs


def test_missing_target_column_is_named(tmp_path, tiny_csv):
    cfg = compose_config(csv_overrides(tiny_csv, tmp_path) + ["data.target=churned"])
    with pytest.raises(ModelSphereError, match="'churned'") as error:
        run_preprocessing(cfg)
    assert "customer_id" in str(error.value)  # lists the columns there are
    with pytest.raises(ModelSphereError, match="'churned'"):
        run_training(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "model.json").exists()


def test_nonexistent_data_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "customers.csv"
    cfg = compose_config(csv_overrides(missing, tmp_path))
    with pytest.raises(ModelSphereError, match="not found") as error:
        run_training(cfg, tmp_path / "run")
    assert str(missing) in str(error.value)


def test_negative_learning_rate_is_rejected_before_any_work(tmp_path, tiny_csv):
    cfg = compose_config(csv_overrides(tiny_csv, tmp_path) + ["train.lr=-1"])
    with pytest.raises(ModelSphereError, match=r"train\.lr"):
        run_training(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_a_clear_error(tmp_path, tiny_csv):
    cfg = compose_config(csv_overrides(tiny_csv, tmp_path) + ["device=cuda"])
    with pytest.raises(ModelSphereError, match="CUDA is not available"):
        run_training(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------
# Evaluation and prediction inputs


def test_evaluate_on_a_dir_without_a_model(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for run_dir, fragment in ((empty, "model.json"), (tmp_path / "gone", "no such")):
        cfg = compose_config(
            [f"run_dir={run_dir}", f"paths.outputs_dir={tmp_path}", "device=cpu"],
            config_name="evaluate",
        )
        with pytest.raises(ModelSphereError, match=fragment) as error:
            run_evaluation(cfg, tmp_path / "eval")
        assert str(run_dir) in str(error.value)


def test_predict_without_any_training_run(tmp_path):
    source = write(features(), tmp_path / "in.csv")
    cfg = compose_config(
        [
            f"input={source}",
            f"output={tmp_path / 'out.parquet'}",
            f"paths.outputs_dir={tmp_path / 'outputs'}",
            "device=cpu",
        ],
        config_name="predict",
    )
    with pytest.raises(ModelSphereError, match="no training run found"):
        run_batch_prediction(cfg, tmp_path / "predict_run")


def test_predict_input_missing_a_feature_column(run_dir, tmp_path):
    source = write(features().drop(columns="age"), tmp_path / "in.csv")
    with pytest.raises(ModelSphereError, match=r"\['age'\]"):
        predict(run_dir, source, tmp_path / "out" / "scored.parquet")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "name, make, fragment",
    [
        ("empty.csv", lambda path: path.write_bytes(b""), "empty"),
        (
            "header.csv",
            lambda path: write(features().head(0), path),
            "no data rows",
        ),
        (
            "header.parquet",
            lambda path: write(features().head(0), path),
            "no data rows",
        ),
    ],
)
def test_predict_input_without_rows(run_dir, tmp_path, name, make, fragment):
    source = tmp_path / name
    make(source)
    output = tmp_path / "out" / "scored.csv"
    with pytest.raises(ModelSphereError, match=fragment) as error:
        predict(run_dir, source, output)
    assert str(source) in str(error.value)
    assert not output.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_predict_rejects_an_unsupported_output_type(run_dir, tmp_path):
    source = write(features(), tmp_path / "in.csv")
    with pytest.raises(ModelSphereError, match=r"\.xlsx"):
        predict(run_dir, source, tmp_path / "scored.xlsx")
    assert not (tmp_path / "scored.xlsx").exists()


# ----------------------------------------------------------------------------
# Atomic output, ignored columns, unseen levels


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_failure_in_a_later_chunk_keeps_the_old_output(
    run_dir, tmp_path, caplog, suffix
):
    frame = features().astype({"age": object})
    frame.loc[180, "age"] = "abc"  # 0-based row 180: data row 181, chunk 4 of 5
    source = write(frame, tmp_path / "in" / "bad.csv")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / f"scored{suffix}"
    old = b"customer_id,prediction\nOLD,yes\n"
    output.write_bytes(old)
    caplog.set_level(logging.INFO, logger="modelsphere")

    with pytest.raises(ModelSphereError) as error:
        predict(run_dir, source, output, "chunk_rows=50")

    message = str(error.value)
    assert "'age'" in message and "row 181" in message and "'abc'" in message
    assert "scored 150 rows" in caplog.text  # earlier chunks had been written
    assert output.read_bytes() == old
    assert [path.name for path in out_dir.iterdir()] == [output.name]


def test_extra_and_target_columns_are_ignored(run_dir, tmp_path, caplog):
    clean = features()
    noisy = clean.copy()
    noisy.insert(0, "notes", "call back")
    noisy["label"] = "maybe"  # not a class: it must not even be read
    noisy["signup_year"] = 2020
    caplog.set_level(logging.INFO, logger="modelsphere")
    predict(run_dir, write(clean, tmp_path / "clean.csv"), tmp_path / "a.parquet")
    predict(run_dir, write(noisy, tmp_path / "noisy.csv"), tmp_path / "b.parquet")
    expected = pd.read_parquet(tmp_path / "a.parquet")
    scored = pd.read_parquet(tmp_path / "b.parquet")
    assert list(scored.columns) == ["customer_id", "prediction", *PROBABILITIES]
    pd.testing.assert_frame_equal(scored, expected)
    assert "ignoring 2 column(s)" in caplog.text
    assert "'label' is ignored" in caplog.text


def test_unseen_levels_and_missing_values_are_scored(run_dir, tmp_path):
    frame = features().head(24).reset_index(drop=True)
    frame.loc[0:3, "plan"] = "platinum"
    frame.loc[4:7, "plan"] = "gold"
    frame.loc[8:11, "region"] = None
    frame.loc[12:15, "income"] = np.nan
    frame.loc[16:19, "age"] = np.nan
    frame.loc[20:23, ["age", "income", "plan", "region"]] = np.nan
    output = tmp_path / "scored.parquet"
    summary = predict(run_dir, write(frame, tmp_path / "in.csv"), output)
    scored = pd.read_parquet(output)
    assert summary["rows"] == len(scored) == 24
    probabilities = scored[PROBABILITIES].to_numpy()
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    # Two different unseen levels share the reserved "unseen" code.
    twins = frame.loc[0:3].copy()
    twins["plan"] = "gold"
    twin_out = tmp_path / "twins.parquet"
    predict(run_dir, write(twins, tmp_path / "twins.csv"), twin_out)
    np.testing.assert_array_equal(
        pd.read_parquet(twin_out)[PROBABILITIES].to_numpy(), probabilities[0:4]
    )


def test_undefined_validation_metric_stops_with_a_clear_message(tmp_path):
    """A class too rare to reach the val split leaves val ROC-AUC undefined."""
    frame = make_table(rows=80)
    frame["label"] = ["yes" if i < 2 else "no" for i in range(len(frame))]
    csv = tmp_path / "rare.csv"
    frame.to_csv(csv, index=False)
    cfg = compose_config(csv_overrides(csv, tmp_path) + ["train.max_epochs=2"])
    with pytest.raises(ModelSphereError, match=r"val_roc_auc is undefined in epoch 1"):
        run_training(cfg, tmp_path / "outputs" / "train" / "rare")


def test_a_failed_write_stops_the_stage_threads(run_dir, tmp_path, monkeypatch):
    """predict.py's read and forward stages run in threads: when the writer fails
    mid-file, they stop before the error reaches the caller, and the output is
    left as it was (absent)."""
    import threading

    from modelsphere.data import table_io as table_files

    source = write(features(), tmp_path / "in" / "rows.csv")
    output = tmp_path / "out" / "scored.parquet"
    output.parent.mkdir()
    written = []

    def disk_full(self, frame):
        if written:
            raise ModelSphereError(f"cannot write {output}: No space left on device")
        written.append(len(frame))

    monkeypatch.setattr(table_files.TableWriter, "write", disk_full)
    try:
        predict(run_dir, source, output, "chunk_rows=5", "prefetch_chunks=1")
    except ModelSphereError as error:  # checked while its traceback is alive
        message = str(error)
        alive = [t.name for t in threading.enumerate() if t.name == "prefetch"]
    else:
        pytest.fail("the failed write was not reported")
    assert "No space left on device" in message
    assert alive == []
    assert written == [5]
    assert list(output.parent.iterdir()) == []
