"""The settings of evaluate.py (`conf/evaluate.yaml`), predict.py
(`conf/predict.yaml`) and export.py (`conf/export.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING, DictConfig

from modelsphere.core.config import (
    DeviceConfig,
    PathsConfig,
    check_no_missing,
    register_schema,
    require,
    setting,
    validate,
)
from modelsphere.data.splits import SPLITS
from modelsphere.inference.engines import ENGINES

PREDICT_ENGINES = ("auto", *ENGINES)  # auto: onnx on the CPU, torch on CUDA
PREDICT_HINT = "Example: python predict.py input=new.csv output=scored.parquet"


@dataclass
class EvaluateAppConfig:
    """`conf/evaluate.yaml`: evaluate a finished training run."""

    run_dir: Optional[str] = None  # null: the latest training run
    # a split of the run's own processed data
    split: str = setting("test", choices=SPLITS)
    input: Optional[str] = None  # or a labelled CSV/Parquet file instead
    # rows per forward pass: on the CPU, 2,048 keeps a pass's activations in
    # the caches (Telco: 0.73x eager PyTorch's, 0.79x ONNX's 8,192-row time)
    batch_size: int = setting(2048, ge=1)
    plot: bool = True
    paths: PathsConfig = field(default_factory=PathsConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)


@dataclass
class PredictAppConfig:
    """`conf/predict.yaml`: score a CSV or Parquet file with a training run."""

    run_dir: Optional[str] = None  # null: the latest training run
    input: str = MISSING  # CSV or Parquet file with the model's feature columns
    output: str = MISSING  # .parquet or .csv; written atomically
    # rows read, scored and written at a time (bounds memory)
    chunk_rows: int = setting(65_536, ge=1)
    # rows per forward pass: on the CPU, 2,048 keeps a pass's activations in
    # the caches (Telco: 0.73x eager PyTorch's, 0.79x ONNX's 8,192-row time)
    batch_size: int = setting(2048, ge=1)
    # chunks queued between the three stages (read + transform, forward, write),
    # each in its own thread; 0: one after the other. Memory holds up to
    # chunk_rows x (2 x this + 2 + forward passes at once) rows
    prefetch_chunks: int = setting(2, ge=0)
    engine: str = setting("auto", choices=PREDICT_ENGINES)
    # forward passes on consecutive chunks at once; null: one per core with
    # ONNX Runtime and prefetching, else 1 (batch_predict.forward_plan)
    forward_workers: Optional[int] = setting(None, ge=1)
    # intra-op threads of a forward pass (ONNX Runtime's session, or eager
    # PyTorch's on the CPU); null: the cores shared among forward_workers
    threads: Optional[int] = setting(None, ge=1)
    delimiter: str = setting(",", length=1)  # CSV input only
    encoding: str = "utf8"  # CSV input only: e.g. latin-1, cp1252
    paths: PathsConfig = field(default_factory=PathsConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)

    @staticmethod
    def check(node: DictConfig, key: str) -> None:
        require(
            not (node.engine == "onnx" and node.device.name == "cuda"),
            "engine=onnx runs on the CPU: use device=cpu, or engine=auto or torch",
        )


@dataclass
class ExportAppConfig:
    """`conf/export.yaml`: write a run's model as one ONNX graph from raw
    columns to scores (inference/raw_export.py)."""

    run_dir: Optional[str] = None  # null: the latest training run
    output: Optional[str] = None  # null: <run_dir>/model_raw.onnx
    # the split of the run's own data the graph is checked on before writing
    check_split: str = setting("test", choices=SPLITS)
    paths: PathsConfig = field(default_factory=PathsConfig)


def validate_evaluate_app(cfg: DictConfig) -> None:
    validate(cfg, EvaluateAppConfig)


def validate_export_app(cfg: DictConfig) -> None:
    validate(cfg, ExportAppConfig)


def validate_predict_app(cfg: DictConfig) -> None:
    check_no_missing(cfg, PREDICT_HINT)
    validate(cfg, PredictAppConfig)


register_schema("evaluate_schema", EvaluateAppConfig)
register_schema("predict_schema", PredictAppConfig)
register_schema("export_schema", ExportAppConfig)
