"""Input and output tables for prediction and evaluation: CSV or Parquet, in chunks."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .csvio import DEFAULT_BLOCK_BYTES, iter_string_frames, read_header
from .errors import ModelSphereError
from .fileio import atomic_path

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
COMPRESSION = "zstd"


def table_format(path: str | Path, role: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ModelSphereError(
            f"{role}={path}: unsupported file type {suffix or '(none)'!r}; "
            "use .csv or .parquet"
        )
    return SUFFIXES[suffix]


def _parquet_file(path: Path) -> pq.ParquetFile:
    if not path.is_file():
        raise ModelSphereError(f"file not found: {path}")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ModelSphereError(f"{path} is not a readable Parquet file: {exc}") from exc


def table_columns(path: str | Path) -> List[str]:
    path = Path(path)
    if table_format(path, "input") == "csv":
        return read_header(path)
    return list(_parquet_file(path).schema_arrow.names)


def iter_table_chunks(
    path: str | Path, chunk_rows: int, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> Iterator[pd.DataFrame]:
    """Rows of a CSV (as strings) or Parquet file (typed), `chunk_rows` at most."""
    path = Path(path)
    if table_format(path, "input") == "csv":
        frames = iter_string_frames(
            path, read_header(path), block_bytes=block_bytes, frame_rows=chunk_rows
        )
    else:
        frames = _parquet_frames(_parquet_file(path), path, chunk_rows)
    for frame in frames:
        for start in range(0, len(frame), chunk_rows):
            chunk = frame.iloc[start : start + chunk_rows]
            yield chunk.reset_index(drop=True)


def _parquet_frames(
    parquet: pq.ParquetFile, path: Path, chunk_rows: int
) -> Iterator[pd.DataFrame]:
    try:
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ModelSphereError(f"{path}: cannot read Parquet data: {exc}") from exc


def read_table(path: str | Path, chunk_rows: int = 1 << 20) -> pd.DataFrame:
    """A whole (modest) table in memory; raises if it has no rows."""
    chunks = list(iter_table_chunks(path, chunk_rows))
    if not chunks:
        raise ModelSphereError(f"{path} has no data rows")
    return pd.concat(chunks, ignore_index=True)


class TableWriter:
    """Writes chunks to a temp file and renames it into place only on success."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.format = table_format(self.path, "output")
        self._writer = None
        self._schema: Optional[pa.Schema] = None

    @contextmanager
    def open(self) -> Iterator["TableWriter"]:
        with atomic_path(self.path) as tmp:
            self._tmp = tmp
            try:
                yield self
            finally:
                if self._writer is not None:
                    self._writer.close()

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            self._schema = table.schema
            if self.format == "parquet":
                self._writer = pq.ParquetWriter(
                    self._tmp, self._schema, compression=COMPRESSION
                )
            else:
                self._writer = pacsv.CSVWriter(str(self._tmp), self._schema)
        self._writer.write_table(table.cast(self._schema))
