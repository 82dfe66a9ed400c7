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
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import OmegaConf

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.progress import Advance, progress_bar
from modelsphere.core.fileio import (
    atomic_write_json,
    atomic_write_text,
    file_lock,
    read_json,
    sha256_file,
    sha256_text,
)
from modelsphere.data.cleaning import clean_frame
from modelsphere.data.profile import profile_markdown, profile_of
from modelsphere.data.raw_csv import iter_string_frames, read_header
from modelsphere.data.schema import ColumnStats, Schema, infer_schema
from modelsphere.data.sources import materialise_raw_csv
from modelsphere.data.splits import SPLITS, ProcessedData, SplitWriters, arrow_schema

log = logging.getLogger(__name__)

TRAIN, VAL, TEST, DROPPED = 0, 1, 2, 255
MANIFEST_VERSION = 1


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
    from modelsphere.data import cleaning, numbers, profile, raw_csv, schema, splits

    digest = hashlib.sha256()
    modules = (cleaning, numbers, profile, raw_csv, schema, splits)
    modules += (sys.modules[__name__],)
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


def _scan(raw_path: Path, columns: List[str], data_cfg: Any, advance: Advance):
    """Pass 1: column statistics, and the target class code of every row;
    `advance(rows)` after each block (a progress bar)."""
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
        advance(len(frame))
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


def _preprocess(data_cfg: Any, raw_path: Path, target_dir: Path) -> ProcessedData:
    started = time.perf_counter()
    columns = read_header(raw_path, data_cfg.delimiter, data_cfg.encoding)
    if data_cfg.target not in columns:
        infer_schema({}, columns, data_cfg, str(raw_path))  # raises the friendly error
    log.info("scanning %s (%d columns)", raw_path, len(columns))
    with progress_bar(f"scanning {raw_path.name}", total=None) as advance:
        stats, n_rows, codes = _scan(raw_path, columns, data_cfg, advance)
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
        with progress_bar(f"splitting {raw_path.name}", total=n_rows) as advance:
            counts = _write_splits(
                raw_path, columns, schema, assignment, staging, data_cfg, advance
            )
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
    raw_path, columns, schema, assignment, staging, data_cfg, advance: Advance
) -> Dict[str, Any]:
    """Pass 2: type each block by the schema and route its rows to the splits;
    `advance(rows)` after each block (a progress bar)."""
    writers = SplitWriters(staging, data_cfg.format, arrow_schema(schema), data_cfg)
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
            advance(len(frame))
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
    profile = profile_of(schema, stats, counts, staging, data_cfg.format, n_rows)
    atomic_write_json(staging / "profile.json", profile)
    atomic_write_text(staging / "profile.md", profile_markdown(profile))
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


def _swap_into_place(staging: Path, target_dir: Path) -> None:
    """Replace the old processed folder by the new one with two renames."""
    old = target_dir.with_name(f".{target_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target_dir.exists():
        target_dir.rename(old)
    staging.rename(target_dir)
    shutil.rmtree(old, ignore_errors=True)
