"""How this process holds its data: the three splits as tensors in memory (its
shard of them under DDP with train.ddp_data=shards), or the training split
streamed from its Parquet row groups (training/streaming.py) when
`train.loading` says so or its tensors would pass `train.memory_budget_mib`."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from modelsphere.core.devices import DeviceChoice
from modelsphere.core.errors import ModelSphereError
from modelsphere.data.splits import SPLITS, ProcessedData, split_row_groups
from modelsphere.features.tensors import SplitTensors, split_tensors
from modelsphere.models.numeric_embeddings import bin_fit_rows
from modelsphere.training.distributed import DistContext
from modelsphere.training.sharding import holds_shards, shard_rows
from modelsphere.training.stream_cache import split_cache
from modelsphere.training.streaming import (
    MIB,
    StreamedEvalSplit,
    StreamedTrainSplit,
    StreamPlan,
    choose_loading,
    tensor_bytes_per_row,
)
from modelsphere.training.trainer import TrainingData

log = logging.getLogger(__name__)

CACHED_SPLITS = ("train", "val")  # read every epoch
CACHE_SHARE_OF_FREE_DISK = 0.5  # the most of the free disk a stream cache takes


@dataclass
class LoadedData:
    splits: Dict[str, Any]  # SplitTensors, or the streamed sources
    train: TrainingData  # what building the trainer needs
    streamed: bool


def load_data(
    cfg,
    run_dir: Path,
    data: ProcessedData,
    feature_state,
    device: DeviceChoice,
    context: DistContext,
) -> LoadedData:
    sharded = holds_shards(context, cfg.train.ddp_data)
    n_train = data.split_rows("train")
    bytes_per_row = tensor_bytes_per_row(data, feature_state, device.device)
    streamed, why = choose_loading(
        cfg.train.loading,
        cfg.train.memory_budget_mib,
        -(-n_train // context.world_size) if sharded else n_train,
        bytes_per_row,
    )
    log.info("training split %s: %s", "streamed" if streamed else "in memory", why)
    if streamed and context.enabled and not sharded:
        raise ModelSphereError(
            f"the training split is streamed ({why}), and each process streams "
            "its own row groups, but train.ddp_data=replicated asks every process "
            "to hold every row: use train.ddp_data=shards, or train.loading=memory"
        )
    if streamed:
        cached = CACHED_SPLITS if _caching(cfg, run_dir, data, bytes_per_row) else ()
        caches = {
            split: split_cache(run_dir, split, data.split_sha256(split), feature_state)
            for split in cached
        }
        return _streamed(cfg, caches, data, feature_state, device, context)
    splits = {
        split: split_tensors(
            data,
            split,
            feature_state,
            device.device,
            shard_rows(data.split_rows(split), context) if sharded else None,
        )
        for split in SPLITS
    }
    train = TrainingData(
        target=splits["train"].target,
        fit_sample=(
            _fit_sample(cfg, data, feature_state, device)
            if sharded
            else splits["train"]
        ),
        n_rows=n_train,
    )
    return LoadedData(splits, train, streamed=False)


def _streamed(cfg, caches, data, feature_state, device, context) -> LoadedData:
    """The streamed splits; `caches`: the stream cache of each split that has
    one (none when this run keeps no cache)."""
    source = StreamedTrainSplit(data, feature_state, device.device, caches.get("train"))
    splits: Dict[str, Any] = {"train": source}
    for split in ("val", "test"):
        splits[split] = StreamedEvalSplit(
            data,
            split,
            feature_state,
            device.device,
            context,
            caches.get(split),
        )
    group_rows = tuple(split_row_groups(data, "train"))
    # The row groups this process streams (before the batch size is known).
    plan = StreamPlan.for_stream(
        context.world_size, context, group_rows, cfg.train.shuffle_buffer_rows
    )
    train = TrainingData(
        target=(
            source.targets(plan)
            if cfg.train.class_weights != "none"
            else torch.zeros(0, dtype=torch.int64)
        ),
        fit_sample=_fit_sample(cfg, data, feature_state, device),
        n_rows=data.split_rows("train"),
        group_rows=group_rows,
    )
    return LoadedData(splits, train, streamed=True)


def _caching(cfg, run_dir: Path, data, bytes_per_row: int) -> bool:
    """Whether this process keeps a stream cache: for a run of more than one
    epoch, when the train and val tensors of every process take at most a share
    of the free disk (the processes of one machine share it, and the
    checkpoints written beside the cache must still fit)."""
    if not (cfg.train.stream_cache and cfg.train.max_epochs > 1):
        return False
    need = sum(data.split_rows(split) for split in CACHED_SPLITS) * bytes_per_row
    where = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    free = shutil.disk_usage(where).free
    if need > free * CACHE_SHARE_OF_FREE_DISK:
        log.warning(
            "stream cache off: it would take %s MiB, more than %.0f%% of the %s "
            "MiB free on %s; every epoch reads the Parquet (train.stream_cache)",
            f"{need / MIB:,.0f}",
            100 * CACHE_SHARE_OF_FREE_DISK,
            f"{free / MIB:,.0f}",
            where,
        )
        return False
    return True


def _fit_sample(
    cfg, data, feature_state, device: DeviceChoice
) -> Optional[SplitTensors]:
    """The training rows the model's data-dependent settings are fitted on
    (piecewise-linear bin edges: a seeded sample of the whole split), read by
    every process that holds only a shard: the same spec in every process, and
    the same as a single process would fit."""
    if cfg.model.numeric_embedding != "piecewise_linear":
        return None
    rows = bin_fit_rows(data.split_rows("train"), cfg.model.piecewise, cfg.seed)
    return split_tensors(data, "train", feature_state, device.device, rows)
