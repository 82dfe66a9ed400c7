"""Progress bars (core/progress.py): shown only where someone watches, and fed
the rows each long step really did."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from helpers import compose_config, csv_overrides, make_table, run_cli, train_tiny
from modelsphere.core import progress
from modelsphere.core.devices import select_device
from modelsphere.features.tensors import SplitTensors
from modelsphere.inference.batch_predict import predict_file
from modelsphere.inference.evaluation import run_evaluation
from modelsphere.inference.predictor import Predictor
from modelsphere.models.registry import build_model
from modelsphere.models.spec import ModelSpec
from modelsphere.training.epochs import train_one_epoch
from modelsphere.training.optimization import make_loss, make_optimizer, make_scheduler


class RecordedBar:
    """Stands in for tqdm: keeps what a bar was opened with and fed."""

    opened: list = []

    def __init__(self, total=None, initial=0, desc="", **options):
        self.total, self.initial, self.desc, self.updates = total, initial, desc, []
        self.closed = False
        RecordedBar.opened.append(self)

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    monkeypatch.setenv(progress.PROGRESS_VARIABLE, progress.ALWAYS)
    monkeypatch.setattr("tqdm.tqdm", RecordedBar)
    RecordedBar.opened = []
    return RecordedBar.opened


@pytest.mark.parametrize(
    "variable, ci, shown",
    [
        ("1", "true", True),
        ("0", None, False),
        (None, "true", False),
        (None, None, False),
    ],
)
def test_bars_show_only_where_someone_watches(monkeypatch, variable, ci, shown):
    """Forced on or off by MODELSPHERE_PROGRESS; otherwise only on a terminal
    outside CI (here stderr is no terminal)."""
    monkeypatch.setattr("sys.stderr", SimpleNamespace(isatty=lambda: False))
    for name, value in ((progress.PROGRESS_VARIABLE, variable), ("CI", ci)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert progress.shown() is shown


@pytest.mark.parametrize("ci, shown", [(None, True), ("true", False)])
def test_a_terminal_shows_bars_outside_ci(monkeypatch, ci, shown):
    monkeypatch.delenv(progress.PROGRESS_VARIABLE, raising=False)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setattr("sys.stderr", SimpleNamespace(isatty=lambda: True))
    assert progress.shown() is shown


def test_an_epoch_bar_counts_every_training_row(bars):
    rows = 100
    gen = torch.Generator().manual_seed(0)
    data = SplitTensors(
        torch.randn(rows, 3, generator=gen),
        torch.zeros(rows, 0, dtype=torch.long),
        torch.randint(0, 2, (rows,), generator=gen),
    )
    spec = ModelSpec(
        n_numeric=3, cardinalities=[], embedding_dims=[], hidden_sizes=[4], n_outputs=1
    )
    model = build_model(spec)
    optimizer = make_optimizer(model, 1e-2, 0.0)
    train_cfg = SimpleNamespace(max_epochs=1, warmup_epochs=0, scheduler="constant")
    train_one_epoch(
        model,
        data,
        16,
        optimizer,
        make_scheduler(optimizer, train_cfg, steps_per_epoch=7),
        make_loss("binary", data.target, "none"),
        select_device("cpu"),
        1.0,
        gen,
        None,
    )
    (bar,) = bars
    assert (bar.total, bar.initial) == (rows, 0)
    assert bar.updates == [16] * 6 + [4] and bar.closed


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_a_prediction_bar_counts_every_scored_row(bars, tmp_path, suffix):
    run_dir = train_tiny(tmp_path)
    frame = make_table(rows=50, seed=3).drop(columns=["label"])
    source = tmp_path / f"rows.{suffix}"
    if suffix == "csv":
        frame.to_csv(source, index=False)
    else:
        frame.to_parquet(source, index=False)
    bars.clear()  # training's epochs had their own
    predictor = Predictor.from_run_dir(run_dir, select_device("cpu"), 8192)
    predict_file(predictor, source, tmp_path / "scored.parquet", chunk_rows=16)
    (bar,) = bars
    assert "rows." + suffix in bar.desc
    # Parquet's metadata gives the total up front; a CSV's is unknown until read.
    assert bar.total == (50 if suffix == "parquet" else None)
    assert sum(bar.updates) == 50 and bar.closed


def test_training_draws_one_bar_per_epoch(bars, tmp_path):
    run_dir = train_tiny(
        tmp_path, "train.max_epochs=3", "train.early_stopping_patience=null"
    )
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    epochs = [bar for bar in bars if bar.desc.startswith("epoch")]
    assert [bar.desc for bar in epochs] == ["epoch 1", "epoch 2", "epoch 3"]
    for bar, epoch in zip(epochs, history):  # every epoch: every training row
        assert sum(bar.updates) == bar.total == sum(epoch["rows_per_process"])


def test_preprocessing_and_the_feature_fit_count_every_row(bars, tmp_path):
    """Both passes over the raw CSV (its row count unknown until the first ends)
    and the feature fit over the train split, block by block."""
    run_dir = train_tiny(tmp_path, "train.max_epochs=1")
    manifest = json.loads((run_dir / "model.json").read_text())["data"]
    by_name = {bar.desc: bar for bar in bars if not bar.desc.startswith("epoch")}
    assert set(by_name) == {
        "scanning tiny_binary.csv",
        "splitting tiny_binary.csv",
        "fitting features on train",
    }
    scan, split = (
        by_name["scanning tiny_binary.csv"],
        by_name["splitting tiny_binary.csv"],
    )
    assert scan.total is None and sum(scan.updates) == 240 and scan.closed
    assert split.total == 240 and sum(split.updates) == 240 and split.closed
    fit = by_name["fitting features on train"]
    assert sum(fit.updates) == fit.total == manifest["rows"]["train"] and fit.closed


def test_evaluation_counts_every_row_in_batches_with_unchanged_metrics(bars, tmp_path):
    """evaluate.py scores the split a predictor batch at a time under its bar;
    small batches give the metrics one batch gives."""
    run_dir = train_tiny(tmp_path)
    reports = {}
    for batch in (8192, 7):
        bars.clear()
        cfg = compose_config(
            [f"run_dir={run_dir}", "device=cpu", f"batch_size={batch}"],
            config_name="evaluate",
        )
        reports[batch] = run_evaluation(cfg, tmp_path / f"eval_{batch}")
        (bar,) = [b for b in bars if b.desc.startswith("evaluating")]
        rows = reports[batch]["metrics"]["rows"]
        assert bar.desc == "evaluating test split" and bar.total == rows
        assert sum(bar.updates) == rows and bar.closed
        assert len(bar.updates) == -(-rows // batch)
    for name, value in reports[8192]["metrics"].items():
        assert reports[7]["metrics"][name] == pytest.approx(value, abs=1e-6), name


def test_the_cli_draws_bars_only_when_asked(tmp_path, monkeypatch):
    """A subprocess's stderr is a pipe: no bar unless MODELSPHERE_PROGRESS=1."""
    table = tmp_path / "table.csv"
    make_table(rows=120).to_csv(table, index=False)
    args = [*csv_overrides(table, tmp_path), "train=quick", "train.plot=false"]
    monkeypatch.delenv(progress.PROGRESS_VARIABLE, raising=False)
    quiet = run_cli("train.py", *args)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert " rows/s]" not in quiet.stderr and "epoch 1:" not in quiet.stderr
    monkeypatch.setenv(progress.PROGRESS_VARIABLE, progress.ALWAYS)
    shown = run_cli("train.py", *args)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "epoch 1:" in shown.stderr  # tqdm's "<desc>: <percent>|<bar>| ..."
