"""A training split streamed from its Parquet row groups (training/streaming.py):
every row once per epoch, never more than the shuffle buffer's windows in
memory, chosen by a memory budget, resumed mid-epoch exactly."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from helpers import compose_config, csv_overrides, make_table
from helpers.interrupts import interrupted_after
from modelsphere.core.errors import ModelSphereError
from modelsphere.data.preprocessing import prepare_data
from modelsphere.data.splits import split_row_groups
from modelsphere.training.checkpoint import load_checkpoint
from modelsphere.training.interrupts import TrainingInterrupted
from modelsphere.training.run import run_training
from modelsphere.training import loading, streaming
from modelsphere.training.stream_cache import GroupCache
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


@pytest.mark.parametrize("resumed_with", [[], ["train.stream_cache=false"]])
def test_a_streamed_run_resumes_mid_epoch_exactly(
    table, tmp_path, monkeypatch, resumed_with
):
    """Stopped in epoch 2 inside its second window, resumed: the same weights,
    history and metrics as the uninterrupted streamed run, bit for bit; also
    when the resumed run turns the stream cache off (a machine setting)."""
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
    assert list((run_dir / "stream_cache").rglob("train-*"))  # kept for the resume
    monkeypatch.undo()
    resumed = config(table, tmp_path, f"train.resume={run_dir}", *resumed_with)
    run_training(resumed, tmp_path / "x", overrides=resumed_with)
    saved = OmegaConf.load(run_dir / "config.yaml")  # the resumed run's own config
    assert saved.train.stream_cache is not bool(resumed_with)
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
    assert not (run_dir / "stream_cache").exists()  # removed once completed


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


def recorded_reads(monkeypatch) -> Counter:
    """(split, row group) -> how often its Parquet was read, from now on."""
    reads: Counter = Counter()
    read = streaming.read_row_groups

    def recording(data, split, groups, columns=None):
        reads.update((split, group) for group in groups)
        return read(data, split, groups, columns)

    monkeypatch.setattr(streaming, "read_row_groups", recording)
    return reads


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model.safetensors"))


def test_a_run_resumed_in_its_last_epoch_removes_the_whole_cache(
    table, tmp_path, monkeypatch
):
    """The resumed process skips the windows done before the stop without
    reading them; the cache files of those groups go too."""
    run_dir = tmp_path / "outputs" / "train" / "stopped-late"
    steps_per_epoch = -(-280 // 16)  # 400 rows -> 280 train rows, batch 16
    interrupted_after(monkeypatch, 2 * (steps_per_epoch + 1) + 12)  # epoch 3
    with pytest.raises(TrainingInterrupted, match="epoch 3, batch 13"):
        run_training(config(table, tmp_path), run_dir)
    monkeypatch.undo()
    run_training(config(table, tmp_path, f"train.resume={run_dir}"), tmp_path / "x")
    assert metrics(run_dir)["training"]["epochs_run"] == 3
    assert not (run_dir / "stream_cache").exists()


def test_later_epochs_read_the_stream_cache_and_train_the_same(
    table, tmp_path, monkeypatch
):
    plain = tmp_path / "outputs" / "train" / "uncached"
    cached_reads = recorded_reads(monkeypatch)
    run_training(config(table, tmp_path, "train.stream_cache=false"), plain)
    plain_reads = Counter(cached_reads)
    cached_reads.clear()
    cached = tmp_path / "outputs" / "train" / "cached"
    in_main_thread = []
    load_window = StreamedTrainSplit.load_window

    def recording(self, groups, seed):
        in_main_thread.append(threading.current_thread() is threading.main_thread())
        return load_window(self, groups, seed)

    monkeypatch.setattr(StreamedTrainSplit, "load_window", recording)
    run_training(config(table, tmp_path), cached)
    # the first epoch's windows are read and transformed by the reading thread;
    # windows read back from the cache are loaded by the training thread
    first = len(in_main_thread) // 3
    assert not any(in_main_thread[:first]) and all(in_main_thread[first:])
    cfg = config(table, tmp_path)
    groups = len(split_row_groups(prepare_data(cfg.data, cfg.paths.data_dir), "train"))
    train_groups = {g for split, g in plain_reads if split == "train"}
    assert len(train_groups) == groups
    for group in train_groups:  # epochs 2 and 3 read the cache, not the split
        assert plain_reads["train", group] - cached_reads["train", group] == 2
    val = [key for key in plain_reads if key[0] == "val"]
    assert val and all(plain_reads[key] == 4 for key in val)  # 3 epochs + final
    assert all(cached_reads[key] == 1 for key in val)
    assert all(cached_reads[key] == 1 for key in plain_reads if key[0] == "test")
    left, right = weights(plain), weights(cached)
    for name in left:
        assert torch.equal(left[name], right[name]), name
    assert metrics(plain)["final"] == metrics(cached)["final"]
    assert not (cached / "stream_cache").exists()


def test_one_epoch_or_a_full_disk_trains_without_the_cache(
    table, tmp_path, monkeypatch, caplog
):
    one = tmp_path / "outputs" / "train" / "one-epoch"
    stopped = []
    monkeypatch.setattr(GroupCache, "remove", lambda self: stopped.append(self))
    run_training(config(table, tmp_path, "train.max_epochs=1"), one)
    assert not stopped and not (one / "stream_cache").exists()

    def full_disk(tensors, path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("modelsphere.training.stream_cache.save_file", full_disk)
    reads = recorded_reads(monkeypatch)
    full = tmp_path / "outputs" / "train" / "full-disk"
    run_training(config(table, tmp_path), full)
    assert metrics(full)["training"]["epochs_run"] == 3
    train = [n for (split, _), n in reads.items() if split == "train"]
    assert train and min(train) == 3  # every group read again every epoch
    warnings = [r for r in caplog.records if "could not write" in r.getMessage()]
    assert len(warnings) == 2  # once for train, once for val; never again
    assert "No space left on device" in warnings[0].getMessage()


def test_no_cache_when_it_would_take_half_the_free_disk(
    table, tmp_path, monkeypatch, caplog
):
    usage = shutil.disk_usage(tmp_path)
    tiny = usage._replace(free=4096)  # far below this run's tensors
    monkeypatch.setattr(loading.shutil, "disk_usage", lambda path: tiny)
    made = []
    get = GroupCache.get

    def recording(self, group, make):
        made.append(group)
        return get(self, group, make)

    monkeypatch.setattr(GroupCache, "get", recording)
    run_dir = tmp_path / "outputs" / "train" / "no-room"
    run_training(config(table, tmp_path), run_dir)
    assert not made and not (run_dir / "stream_cache").exists()
    (warning,) = [r for r in caplog.records if "stream cache off" in r.getMessage()]
    assert "MiB free on" in warning.getMessage()
    monkeypatch.setattr(loading.shutil, "disk_usage", lambda path: usage)
    caplog.clear()
    run_training(config(table, tmp_path), tmp_path / "outputs" / "train" / "room")
    assert not [r for r in caplog.records if "stream cache off" in r.getMessage()]
    assert made  # with room on the disk, the same run caches


def test_an_unreadable_cache_file_is_read_from_the_split_again(tmp_path, monkeypatch):
    cache = GroupCache(tmp_path / "cache", "train")
    made = []

    def make():
        made.append(1)
        return streaming.SplitTensors(
            torch.ones(3, 2), torch.zeros(3, 0, dtype=torch.int64), torch.arange(3)
        )

    first = cache.get(4, make)
    assert torch.equal(cache.get(4, make).numeric, first.numeric) and len(made) == 1
    cache.path(4).write_bytes(b"half a file")  # a write cut short by a crash
    again = cache.get(4, make)
    assert len(made) == 2 and torch.equal(again.target, torch.arange(3))
    assert torch.equal(cache.get(4, make).numeric, first.numeric) and len(made) == 2
    cache.remove()
    assert not (tmp_path / "cache").exists()
    cache.get(4, make)
    assert cache.path(4).is_file()

    def full_disk(tensors, path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("modelsphere.training.stream_cache.save_file", full_disk)
    cache.get(5, make)  # cannot be written: the cache is off, its files gone
    assert not cache.enabled and not cache.path(4).exists()


def test_the_cache_key_changes_with_the_data_and_the_transform():
    from modelsphere.training.stream_cache import cache_key

    state = {"numeric": [{"name": "x", "q": [0.0, 1.0]}]}
    other = {"numeric": [{"name": "x", "q": [0.0, 2.0]}]}
    assert cache_key("a" * 64, state) == cache_key("a" * 64, dict(state))
    assert cache_key("a" * 64, state) != cache_key("b" * 64, state)
    assert cache_key("a" * 64, state) != cache_key("a" * 64, other)
