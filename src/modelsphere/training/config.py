"""The settings of data_preprocessing.py and train.py (`conf/config.yaml`): the
`train` section, and the whole app config composed from every layer's section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig

from modelsphere.core.config import (
    DeviceConfig,
    PathsConfig,
    check_no_missing,
    register_schema,
    require,
    setting,
    validate,
)
from modelsphere.data.config import DataConfig
from modelsphere.models.config import ModelConfig
from modelsphere.tracking.config import LoggerConfig
from modelsphere.training.optimization import CLASS_WEIGHTS, SCHEDULERS
from modelsphere.training.sharding import DDP_DATA
from modelsphere.training.streaming import LOADINGS

DATA_HINT = "For your own CSV: data=csv data.path=my.csv data.target=label"


@dataclass
class TrainConfig:
    # an upper bound: early stopping ends most runs well before it. It also sets
    # the cosine schedule's length, so a run that still improves keeps a useful
    # learning rate; at 100, small regression tables (Computers, concrete,
    # hotel_rates) were still improving at the cap (quality_regression.md)
    max_epochs: int = setting(200, ge=1)
    # null: a power of two giving ~batches_per_epoch_target steps per epoch,
    # within [batch_size_min, batch_size_max]; under DDP, the global batch
    batch_size: Optional[int] = setting(None, ge=1)
    batch_size_min: int = setting(64, ge=1)
    batch_size_max: int = setting(1024, ge=1)
    batches_per_epoch_target: int = setting(16, ge=1)
    eval_batch_size: int = setting(8192, ge=1)  # rows per forward in validation
    lr: float = setting(1e-3, gt=0)  # AdamW
    # not applied to biases, norms and embeddings
    weight_decay: float = setting(1e-4, ge=0)
    scheduler: str = setting("cosine", choices=SCHEDULERS)
    warmup_epochs: int = setting(0, ge=0)
    grad_clip_norm: Optional[float] = setting(1.0, gt=0)  # null: no clipping
    # epochs without improvement before stopping; null: off
    early_stopping_patience: Optional[int] = setting(16, ge=1)
    min_delta: float = setting(0.0, ge=0)
    # auto: roc_auc (binary), log_loss (multiclass), rmse (regression)
    monitor: str = "auto"
    class_weights: str = setting("none", choices=CLASS_WEIGHTS)
    # under DDP: shards (each process holds 1/world of every split) or
    # replicated (each holds all; matches one process up to float rounding)
    ddp_data: str = setting("shards", choices=DDP_DATA)
    # how this process holds the training split: memory (tensors), stream (its
    # Parquet row groups through a shuffle buffer, a window at a time), or auto:
    # stream when the tensors would pass train.memory_budget_mib
    loading: str = setting("auto", choices=LOADINGS)
    memory_budget_mib: Optional[float] = setting(None, gt=0)  # null: half the RAM
    shuffle_buffer_rows: int = setting(262_144, ge=1)  # rows of a streamed window
    # a streamed run of more than one epoch keeps its row groups' tensors in
    # <run dir>/stream_cache after the first epoch (removed when it completes)
    stream_cache: bool = True
    # under DDP: seconds to wait for the other processes (the rendezvous, and
    # each collective operation) before stopping with a message
    ddp_timeout_s: float = setting(300.0, gt=0)
    # under SLURM: SIGUSR1/SIGUSR2 (sbatch --signal) save a checkpoint and requeue
    # the job, which then resumes by itself; false: save and stop only
    slurm_requeue: bool = True
    resume: Optional[str] = None  # a run dir to continue from its last checkpoint
    plot: bool = True  # training_curve.png in the run dir

    @staticmethod
    def check(node: DictConfig, key: str) -> None:
        require(
            node.batch_size_min <= node.batch_size_max,
            f"need 1 <= {key}.batch_size_min <= {key}.batch_size_max",
        )


@dataclass
class TrainAppConfig:
    """`conf/config.yaml`: used by data_preprocessing.py and train.py."""

    seed: int = setting(0, ge=0)
    paths: PathsConfig = field(default_factory=PathsConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def validate_train_app(cfg: DictConfig) -> None:
    """Everything data_preprocessing.py and train.py read, checked up front."""
    check_no_missing(cfg.data, DATA_HINT)
    validate(cfg, TrainAppConfig)


register_schema("train_schema", TrainAppConfig)
