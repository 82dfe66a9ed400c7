"""A training split streamed from its Parquet row groups (training/streaming.py):
every row once per epoch, never more than the shuffle buffer's windows in
memory, chosen by a memory budget, resumed mid-epoch exactly."""

from __future__ import annotations

import contextlib
import json
import signal
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import compose_config, csv_overrides, make_table
from modelsphere.core.errors import ModelSphereError
from modelsphere.data.preprocessing import prepare_data
from modelsphere.data.splits import split_row_groups
from modelsphere.training import run as training
from modelsphere.training.checkpoint import load_checkpoint
from modelsphere.training.interrupts import StopRequest, TrainingInterrupted
from modelsphere.training.run import run_training
from modelsphere.training.streaming import StreamedTrainSplit

pytestmark = pytest.mark.pipeline

GROUP_ROWS = 40  # rows per Parquet row group of the splits
BUFFER_ROWS = 100  # train.shuffle_buffer_rows: windows of 3 groups
STREAM = [
    "train.loading=stream",
    f"data.write_row_group_rows={GROUP_ROWS}",
    f"train.shuffle_buffer_rows={BUFFER_ROWS}",
    "train.batch_size=16",
    "train.max_epochs=3",
    "train.early_stopping_patience=null",
    "train.plot=false",
]
TIMING = ("seconds", "rows_per_second")


@pytest.fixture
def table(tmp_path) -> Path:
    path = tmp_path / "table.csv"
    make_table(rows=400).to_csv(path, index=False)
    return path


def config(table: Path, base: Path, *extra: str):
    return compose_config(csv_overrides(table, base) + STREAM + list(extra))


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_every_row_group_is_read_once_per_epoch_in_bounded_windows(
    table, tmp_path, monkeypatch
):
    windows = []
    load_window = StreamedTrainSplit.load_window

    def recording(self, groups, seed):
        windows.append(list(groups))
        return load_window(self, groups, seed)

    monkeypatch.setattr(StreamedTrainSplit, "load_window", recording)
    cfg = config(table, tmp_path)
    run_dir = tmp_path / "outputs" / "train" / "streamed"
    run_training(cfg, run_dir)
    groups = split_row_groups(prepare_data(cfg.data, cfg.paths.data_dir), "train")
    n_train = sum(groups)
    assert len(groups) >= 6
    # each epoch reads every row group once, in its own order
    per_epoch = len(windows) // 3
    epochs = [
        [g for window in windows[i * per_epoch : (i + 1) * per_epoch] for g in window]
        for i in range(3)
    ]
    for order in epochs:
        assert Counter(order) == Counter(range(len(groups)))
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    # a window is whole groups of at least the buffer's rows (the last: the rest)
    for window in windows:
        rows = sum(groups[g] for g in window)
        assert rows - groups[window[-1]] < BUFFER_ROWS
    summary = metrics(run_dir)
    assert summary["training"]["loading"] == "stream"
    for epoch in summary["history"]:  # every row trained on once
        assert epoch["rows_per_process"] == [n_train]


def test_auto_streams_only_past_the_memory_budget(table, tmp_path):
    small = tmp_path / "outputs" / "train" / "small-budget"
    run_training(
        config(table, tmp_path, "train.loading=auto", "train.memory_budget_mib=0.001"),
        small,
    )
    assert metrics(small)["training"]["loading"] == "stream"
    large = tmp_path / "outputs" / "train" / "default-budget"
    run_training(config(table, tmp_path, "train.loading=auto"), large)
    assert metrics(large)["training"]["loading"] == "memory"


def test_csv_splits_cannot_be_streamed(table, tmp_path):
    cfg = config(table, tmp_path, "data.format=csv")
    with pytest.raises(ModelSphereError, match="data.format=parquet"):
        run_training(cfg, tmp_path / "outputs" / "train" / "csv")


class StopAfter(StopRequest):
    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls

    def __call__(self) -> bool:
        self.calls -= 1
        if self.calls < 0:
            self.signum = signal.SIGTERM
        return self.signum is not None


def interrupted_after(monkeypatch, calls: int) -> None:
    @contextlib.contextmanager
    def fake_stop_requests():
        yield StopAfter(calls)

    monkeypatch.setattr(training, "stop_requests", fake_stop_requests)


def test_a_streamed_run_resumes_mid_epoch_exactly(table, tmp_path, monkeypatch):
    """Stopped in epoch 2 inside its second window, resumed: the same weights,
    history and metrics as the uninterrupted streamed run, bit for bit."""
    reference = tmp_path / "outputs" / "train" / "reference"
    run_training(config(table, tmp_path), reference)
    run_dir = tmp_path / "outputs" / "train" / "stopped"
    steps_per_epoch = -(
        -sum(metrics(reference)["history"][0]["rows_per_process"]) // 16
    )
    interrupted_after(monkeypatch, (steps_per_epoch + 1) + 9)  # epoch 2, batch 10
    with pytest.raises(TrainingInterrupted, match="epoch 2, batch 10"):
        run_training(config(table, tmp_path), run_dir)
    assert load_checkpoint(run_dir)["partial"]["streamed"] is True
    monkeypatch.undo()
    run_training(config(table, tmp_path, f"train.resume={run_dir}"), tmp_path / "x")
    left = load_file(str(reference / "model.safetensors"))
    right = load_file(str(run_dir / "model.safetensors"))
    for name in left:
        assert torch.equal(left[name], right[name]), name
    strip = [
        [
            {k: v for k, v in row.items() if k not in TIMING}
            for row in metrics(d)["history"]
        ]
        for d in (reference, run_dir)
    ]
    assert strip[0] == strip[1]
    assert metrics(reference)["final"] == metrics(run_dir)["final"]


def test_a_checkpoint_taken_in_memory_does_not_resume_mid_epoch_streamed(
    table, tmp_path, monkeypatch
):
    run_dir = tmp_path / "outputs" / "train" / "memory"
    interrupted_after(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted):
        run_training(config(table, tmp_path, "train.loading=memory"), run_dir)
    monkeypatch.undo()
    cfg = config(table, tmp_path, f"train.resume={run_dir}", "train.loading=stream")
    with pytest.raises(ModelSphereError, match="same train.loading"):
        run_training(cfg, tmp_path / "x", overrides=["train.loading=stream"])
