"""Raw CSV -> typed train/val/test splits (Parquet or CSV) + schema + profile.

Two streaming passes over the raw CSV keep memory bounded by the read block size
(plus one byte per row for the split assignment):

1. scan: per-column statistics (to infer the schema and profile the data) and
   the target's class of every row (to stratify the split);
2. write: each block is typed by the schema and its rows go to the three split
   writers as the seeded assignment says.

The processed folder is built under a temporary name and renamed into place, so
a failure never leaves a half-written dataset where a good one was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import (
    atomic_write_json,
    atomic_write_text,
    file_lock,
    read_json,
    sha256_file,
    sha256_text,
)
from modelsphere.data.cleaning import clean_frame
from modelsphere.data.raw_csv import iter_string_frames, read_header
from modelsphere.data.schema import ColumnStats, Schema, infer_schema
from modelsphere.data.sources import materialise_raw_csv
from modelsphere.data.table_io import iter_parquet_tables

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TRAIN, VAL, TEST, DROPPED = 0, 1, 2, 255
MANIFEST_VERSION = 1
SPLIT_CHUNK_ROWS = 131_072  # rows per chunk when a split is streamed back


@dataclass
class ProcessedData:
    """A processed dataset on disk: the split files, their schema and manifest."""

    directory: Path
    schema: Schema
    format: str
    manifest: Dict[str, Any]

    def split_path(self, split: str) -> Path:
        return self.directory / f"{split}.{self.format}"

    def split_sha256(self, split: str) -> str:
        return self.manifest["splits"][split]["sha256"]


def processed_dir(data_cfg: Any, data_dir: str | Path) -> Path:
    return Path(data_dir) / "processed" / data_cfg.name


def config_fingerprint(data_cfg: Any) -> str:
    """What preprocessing depends on in the config (the whole data node)."""
    plain = (
        OmegaConf.to_container(data_cfg, resolve=True)
        if OmegaConf.is_config(data_cfg)
        else data_cfg
    )
    return sha256_text(json.dumps(plain, sort_keys=True))


def code_fingerprint() -> str:
    """The source of the modules that decide what preprocessing writes: a change
    to any of them (a new inference rule, say) makes older processed data stale."""
    from modelsphere.data import cleaning, numbers, raw_csv, schema

    digest = hashlib.sha256()
    modules = (cleaning, numbers, raw_csv, schema, sys.modules[__name__])
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def prepare_data(
    data_cfg: Any, data_dir: str | Path, force: bool = False
) -> ProcessedData:
    """The processed dataset for `data_cfg`, preprocessing first if missing or stale."""
    target_dir = processed_dir(data_cfg, data_dir)
    with file_lock(target_dir):
        raw_path = materialise_raw_csv(data_cfg)
        if not force:
            current = _load_if_fresh(target_dir, data_cfg, raw_path)
            if current is not None:
                log.info("processed data is up to date: %s", target_dir)
                return current
        return _preprocess(data_cfg, raw_path, target_dir)


def load_processed(directory: str | Path) -> ProcessedData:
    directory = Path(directory)
    manifest = read_json(directory / "manifest.json", "processed-data manifest")
    schema = Schema.from_dict(read_json(directory / "schema.json", "schema"))
    return ProcessedData(directory, schema, manifest["format"], manifest)


def _load_if_fresh(
    directory: Path, data_cfg: Any, raw_path: Path
) -> Optional[ProcessedData]:
    if not (directory / "manifest.json").is_file():
        return None
    try:
        processed = load_processed(directory)
    except (ModelSphereError, KeyError):
        return None
    manifest = processed.manifest
    reasons = []
    if manifest.get("version") != MANIFEST_VERSION:
        reasons.append("manifest version")
    if manifest.get("config_sha256") != config_fingerprint(data_cfg):
        reasons.append("data config changed")
    elif manifest.get("code_sha256") != code_fingerprint():
        reasons.append("preprocessing code changed")
    elif manifest.get("raw", {}).get("sha256") != sha256_file(raw_path):
        reasons.append("raw file changed")
    elif not all(processed.split_path(split).is_file() for split in SPLITS):
        reasons.append("split file missing")
    if reasons:
        log.info(
            "processed data at %s is stale (%s): preprocessing again",
            directory,
            ", ".join(reasons),
        )
        return None
    return processed


def _scan(raw_path: Path, columns: List[str], data_cfg: Any):
    """Pass 1: column statistics, and the target class code of every row."""
    stats = {name: ColumnStats(name) for name in columns}
    target_codes: List[np.ndarray] = []
    code_of: Dict[str, int] = {}
    track_codes = True
    for offset, frame in _raw_blocks(raw_path, columns, data_cfg):
        for name in columns:
            stats[name].update(frame[name], offset, data_cfg.max_tracked_levels)
        if track_codes:
            labels = frame[data_cfg.target].str.strip()
            labels = labels.mask(labels == "")
            for label in labels.dropna().unique():
                code_of.setdefault(label, len(code_of))
            if len(code_of) > data_cfg.max_tracked_levels:
                track_codes, target_codes = False, []
            else:
                target_codes.append(_label_codes(labels, code_of))
    n_rows = stats[columns[0]].n_rows
    if n_rows == 0:
        raise ModelSphereError(f"{raw_path} has a header but no data rows")
    codes = np.concatenate(target_codes) if track_codes else None
    return stats, n_rows, codes


def _label_codes(labels: pd.Series, code_of: Dict[str, int]) -> np.ndarray:
    """The code of each label (-1 where missing), smallest integer type that fits."""
    dtype = np.int16 if len(code_of) < np.iinfo(np.int16).max else np.int32
    known = pa.array(list(code_of), type=pa.string())
    positions = pc.index_in(pa.array(labels, type=pa.string()), value_set=known)
    return positions.fill_null(-1).to_numpy(zero_copy_only=False).astype(dtype)


def _raw_blocks(raw_path: Path, columns: List[str], data_cfg: Any):
    """(row offset, block of string columns) over the raw CSV, in bounded memory."""
    offset = 0
    frames = iter_string_frames(
        raw_path,
        columns,
        data_cfg.delimiter,
        data_cfg.encoding,
        data_cfg.read_block_bytes,
        data_cfg.read_frame_rows,
    )
    for frame in frames:
        yield offset, frame
        offset += len(frame)


def assign_splits(
    n_rows: int,
    strata: Optional[np.ndarray],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> np.ndarray:
    """A seeded train/val/test assignment per row (uint8), stratified if `strata`.

    Rows whose stratum is negative (missing target) are marked DROPPED. Within each
    stratum the rows are in random order and the first `test_fraction` of them go to
    test, the next `val_fraction` to val, so every class keeps its share.
    """
    rng = np.random.default_rng(seed)
    assignment = np.full(n_rows, TRAIN, dtype=np.uint8)
    # The same permutation as rng.permutation(n_rows), at half the memory.
    index_type = np.int32 if n_rows <= np.iinfo(np.int32).max else np.int64
    order = rng.permutation(np.arange(n_rows, dtype=index_type))
    if strata is None:
        groups = [(0, order)]
    else:
        # Each stratum's rows in permutation order (a stable sort by stratum),
        # one stratum at a time: a few bytes per row at the peak.
        sorted_strata = strata[order]
        groups = (
            (stratum, order[sorted_strata == stratum])
            for stratum in np.unique(sorted_strata)
        )
    for stratum, rows in groups:
        if stratum < 0:
            assignment[rows] = DROPPED
            continue
        n_test = int(round(len(rows) * test_fraction))
        n_val = int(round(len(rows) * val_fraction))
        assignment[rows[:n_test]] = TEST
        assignment[rows[n_test : n_test + n_val]] = VAL
    return assignment


def arrow_schema(schema: Schema) -> pa.Schema:
    """The typed layout of a processed split."""
    fields = []
    if schema.id_column is not None:
        fields.append(pa.field(schema.id_column, pa.string()))
    fields += [pa.field(name, pa.float64()) for name in schema.numeric]
    fields += [pa.field(name, pa.string()) for name in schema.categorical]
    target_type = {"float": pa.float64(), "int": pa.int64(), "string": pa.string()}
    fields.append(pa.field(schema.target, target_type[schema.target_kind]))
    return pa.schema(fields)


class _SplitWriters:
    """One writer per split; Parquet (zstd) or CSV. Parquet rows are buffered
    until they fill a row group of `data.write_row_group_rows`, so row groups
    have that size whatever the frame size and split fractions."""

    def __init__(self, directory: Path, fmt: str, schema: pa.Schema, data_cfg: Any):
        self.fmt, self.schema = fmt, schema
        self.row_group_rows = data_cfg.write_row_group_rows
        self.paths = {split: directory / f"{split}.{fmt}" for split in SPLITS}
        if fmt == "parquet":
            self.writers = {
                split: pq.ParquetWriter(path, schema, compression=data_cfg.compression)
                for split, path in self.paths.items()
            }
        else:
            self.writers = {
                split: pacsv.CSVWriter(str(path), schema)
                for split, path in self.paths.items()
            }
        self.rows = Counter()
        self.pending: Dict[str, List[pa.Table]] = {split: [] for split in SPLITS}

    def write(self, split: str, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
        self.rows[split] += len(frame)
        if self.fmt != "parquet":
            self.writers[split].write_table(table)
            return
        self.pending[split].append(table)
        buffered = sum(part.num_rows for part in self.pending[split])
        if buffered >= self.row_group_rows:
            self._flush(split, buffered - buffered % self.row_group_rows)

    def _flush(self, split: str, rows: int) -> None:
        buffered = pa.concat_tables(self.pending[split])
        self.writers[split].write_table(
            buffered.slice(0, rows), row_group_size=self.row_group_rows
        )
        self.pending[split] = [buffered.slice(rows)] if rows < len(buffered) else []

    def finish(self) -> None:
        """Write the rows still buffered (the last, shorter row group)."""
        for split in SPLITS:
            if self.pending[split]:
                self._flush(split, sum(part.num_rows for part in self.pending[split]))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _preprocess(data_cfg: Any, raw_path: Path, target_dir: Path) -> ProcessedData:
    started = time.perf_counter()
    columns = read_header(raw_path, data_cfg.delimiter, data_cfg.encoding)
    if data_cfg.target not in columns:
        infer_schema({}, columns, data_cfg, str(raw_path))  # raises the friendly error
    log.info("scanning %s (%d columns)", raw_path, len(columns))
    stats, n_rows, codes = _scan(raw_path, columns, data_cfg)
    schema = infer_schema(stats, columns, data_cfg, str(raw_path))
    log.info(
        "schema: task=%s target=%r, %d numeric, %d categorical, id=%r, %d ignored",
        schema.task,
        schema.target,
        len(schema.numeric),
        len(schema.categorical),
        schema.id_column,
        len(schema.ignored),
    )
    split_cfg = data_cfg.split
    stratify = schema.is_classification and split_cfg.stratify and codes is not None
    strata = codes if stratify else _missing_target_strata(stats, codes, n_rows)
    assignment = assign_splits(
        n_rows, strata, split_cfg.val_fraction, split_cfg.test_fraction, split_cfg.seed
    )
    del codes, strata  # pass 2 keeps one byte per row: the assignment

    staging = target_dir.with_name(f".{target_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        counts = _write_splits(raw_path, columns, schema, assignment, staging, data_cfg)
        manifest = _finish(staging, schema, stats, counts, raw_path, data_cfg, n_rows)
        _swap_into_place(staging, target_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "processed %d rows in %.1fs -> %s (%s)",
        n_rows,
        time.perf_counter() - started,
        target_dir,
        manifest["rows"],
    )
    return ProcessedData(target_dir, schema, data_cfg.format, manifest)


def _missing_target_strata(stats, codes, n_rows) -> Optional[np.ndarray]:
    """Without stratification, still mark rows with a missing target (code -1)."""
    if codes is None:
        return None
    return -(codes < 0).astype(np.int8)


def _write_splits(
    raw_path, columns, schema, assignment, staging, data_cfg
) -> Dict[str, Any]:
    """Pass 2: type each block by the schema and route its rows to the splits."""
    writers = _SplitWriters(staging, data_cfg.format, arrow_schema(schema), data_cfg)
    problems: Counter = Counter()
    dropped = 0
    n_rows = 0
    try:
        for offset, frame in _raw_blocks(raw_path, columns, data_cfg):
            typed = clean_frame(frame, schema, str(raw_path), offset, counts=problems)
            part = assignment[offset : offset + len(frame)]
            missing_target = typed[schema.target].isna().to_numpy()
            part = np.where(missing_target, DROPPED, part)
            dropped += int(missing_target.sum())
            for code, split in enumerate(SPLITS):
                rows = part == code
                if rows.any():
                    writers.write(split, typed[rows])
            n_rows = offset + len(frame)
        writers.finish()
    finally:
        writers.close()
    for problem, count in sorted(problems.items()):
        log.warning("%s: %s (%d value(s) treated as missing)", raw_path, problem, count)
    if dropped:
        log.warning(
            "%s: dropped %d row(s) with a missing target %r",
            raw_path,
            dropped,
            schema.target,
        )
    for split in SPLITS:
        if writers.rows[split] == 0:
            raise ModelSphereError(
                f"{raw_path}: the {split} split is empty ({n_rows} rows in all); "
                "the data set is too small for data.split fractions"
            )
    return {
        "rows": dict(writers.rows),
        "dropped_missing_target": dropped,
        "problems": dict(problems),
    }


def _finish(
    staging, schema, stats, counts, raw_path, data_cfg, n_rows
) -> Dict[str, Any]:
    """schema.json, profile.json/.md and manifest.json in the staging folder."""
    atomic_write_json(staging / "schema.json", schema.to_dict())
    profile = _profile(schema, stats, counts, staging, data_cfg.format, n_rows)
    atomic_write_json(staging / "profile.json", profile)
    atomic_write_text(staging / "profile.md", _profile_markdown(profile))
    manifest = {
        "version": MANIFEST_VERSION,
        "format": data_cfg.format,
        "config_sha256": config_fingerprint(data_cfg),
        "code_sha256": code_fingerprint(),
        "raw": {"path": str(raw_path), "sha256": sha256_file(raw_path), "rows": n_rows},
        "rows": counts["rows"],
        "splits": {
            split: {
                "file": f"{split}.{data_cfg.format}",
                "rows": counts["rows"][split],
                "sha256": sha256_file(staging / f"{split}.{data_cfg.format}"),
            }
            for split in SPLITS
        },
    }
    atomic_write_json(staging / "manifest.json", manifest)
    return manifest


def _class_counts(path: Path, schema: Schema, fmt: str) -> Dict[str, int]:
    counts: Counter = Counter()
    for frame in iter_split_columns(path, schema, fmt, [schema.target]):
        counts.update(frame[schema.target].value_counts().to_dict())
    return {str(label): int(counts[label]) for label in sorted(counts)}


def _profile(schema, stats, counts, staging, fmt, n_rows) -> Dict[str, Any]:
    roles = {name: "numeric" for name in schema.numeric}
    roles.update({name: "categorical" for name in schema.categorical})
    roles.update({name: f"ignored ({why})" for name, why in schema.ignored.items()})
    roles[schema.target] = f"target ({schema.task})"
    if schema.id_column:
        roles[schema.id_column] = "id"
    profile: Dict[str, Any] = {
        "rows": n_rows,
        "dropped_missing_target": counts["dropped_missing_target"],
        "split_rows": counts["rows"],
        "values_made_missing": counts["problems"],
        "columns": {
            name: _column_profile(name, roles, stats) for name in schema.columns
        },
    }
    if schema.is_classification:
        profile["class_counts"] = {
            split: _class_counts(staging / f"{split}.{fmt}", schema, fmt)
            for split in SPLITS
        }
    return profile


def _column_profile(name, roles, stats) -> Dict[str, Any]:
    role = roles.get(name, "unused")
    column = {"role": role, **stats[name].profile()}
    if not (role == "categorical" or role.startswith("target")):
        column.pop("top_levels", None)
    if role == "categorical" or role.startswith("target ("):
        for key in ("min", "max", "mean", "std"):
            column.pop(key, None)
    return column


def _profile_markdown(profile: Dict[str, Any]) -> str:
    lines = [
        "# Data profile",
        "",
        f"Rows: {profile['rows']} (dropped for a missing target: "
        f"{profile['dropped_missing_target']}); "
        + ", ".join(
            f"{split}: {rows}" for split, rows in profile["split_rows"].items()
        ),
        "",
    ]
    if "class_counts" in profile:
        lines += ["Class counts per split: " + json.dumps(profile["class_counts"]), ""]
    lines += [
        "| column | role | missing | distinct | min | mean | max | top levels |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value):
        return (
            ""
            if value is None
            else f"{value:.4g}" if isinstance(value, float) else str(value)
        )

    for name, col in profile["columns"].items():
        top = ", ".join(
            f"{level} ({count})" for level, count in col.get("top_levels", {}).items()
        )
        lines.append(
            f"| {name} | {col['role']} | {col['missing_fraction']:.1%} "
            f"| {fmt(col['distinct'])} | {fmt(col.get('min'))} "
            f"| {fmt(col.get('mean'))} | {fmt(col.get('max'))} | {top} |"
        )
    return "\n".join(lines) + "\n"


def _swap_into_place(staging: Path, target_dir: Path) -> None:
    """Replace the old processed folder by the new one with two renames."""
    old = target_dir.with_name(f".{target_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target_dir.exists():
        target_dir.rename(old)
    staging.rename(target_dir)
    shutil.rmtree(old, ignore_errors=True)


def _split_convert_options(layout: pa.Schema, names: List[str]):
    return pacsv.ConvertOptions(
        column_types={name: layout.field(name).type for name in names},
        include_columns=names,
        null_values=[""],
        strings_can_be_null=True,
    )


def _split_frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)


def read_split_columns(
    path: Path, schema: Schema, fmt: str, columns: Optional[List[str]] = None
) -> pd.DataFrame:
    """Read a processed split (or some of its columns) with the schema's types."""
    layout = arrow_schema(schema)
    names = columns or layout.names
    if fmt == "parquet":
        table = pq.read_table(path, columns=names)
    else:
        table = pacsv.read_csv(
            path, convert_options=_split_convert_options(layout, names)
        )
    return _split_frame(table)


def iter_split_columns(
    path: Path,
    schema: Schema,
    fmt: str,
    columns: Optional[List[str]] = None,
    chunk_rows: int = SPLIT_CHUNK_ROWS,
) -> Iterator[pd.DataFrame]:
    """A processed split (or some of its columns) as frames typed like
    `read_split_columns`, `chunk_rows` rows each (Parquet, read a row group at a
    time) or one 1 MiB block each (CSV); an empty split gives one empty frame."""
    layout = arrow_schema(schema)
    names = columns or layout.names
    if fmt == "parquet":
        tables = iter_parquet_tables(pq.ParquetFile(path), chunk_rows, names)
    else:
        batches = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 20),
            convert_options=_split_convert_options(layout, names),
        )
        tables = (pa.Table.from_batches([batch]) for batch in batches)
    empty = True
    for table in tables:
        empty = False
        yield _split_frame(table)
    if empty:
        yield _split_frame(pa.schema([layout.field(n) for n in names]).empty_table())


def _checked_split_path(processed: ProcessedData, split: str) -> Path:
    if split not in SPLITS:
        raise ModelSphereError(f"unknown split {split!r}: choose one of {SPLITS}")
    path = processed.split_path(split)
    if not path.is_file():
        raise ModelSphereError(
            f"processed split not found: {path}; run data_preprocessing.py"
        )
    return path


def iter_split_frames(
    processed: ProcessedData,
    split: str,
    columns: Optional[List[str]] = None,
    chunk_rows: int = SPLIT_CHUNK_ROWS,
) -> Iterator[pd.DataFrame]:
    """`load_split` in chunks of at most `chunk_rows` rows, in bounded memory."""
    path = _checked_split_path(processed, split)
    return iter_split_columns(
        path, processed.schema, processed.format, columns, chunk_rows
    )


def load_split(processed: ProcessedData, split: str) -> pd.DataFrame:
    path = _checked_split_path(processed, split)
    return read_split_columns(path, processed.schema, processed.format)
