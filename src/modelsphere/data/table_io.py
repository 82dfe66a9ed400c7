"""Input and output tables for prediction and evaluation: CSV or Parquet, in chunks."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import atomic_path
from modelsphere.data.raw_csv import (
    DEFAULT_BLOCK_BYTES,
    iter_string_frames,
    read_header,
)

FORMATS = ("parquet", "csv")
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


@dataclass(frozen=True)
class CsvOptions:
    """How to parse an input CSV, and the config prefix its error hints name
    (`encoding=latin-1` for predict.py, `data.encoding=latin-1` for the data group).
    """

    delimiter: str = ","
    encoding: str = "utf8"
    option_prefix: str = ""


def table_columns(path: str | Path, csv: CsvOptions = CsvOptions()) -> List[str]:
    path = Path(path)
    if table_format(path, "input") == "csv":
        return read_header(path, csv.delimiter, csv.encoding, csv.option_prefix)
    return list(_parquet_file(path).schema_arrow.names)


def iter_table_chunks(
    path: str | Path,
    chunk_rows: int,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    csv: CsvOptions = CsvOptions(),
) -> Iterator[pd.DataFrame]:
    """Rows of a CSV (as strings) or Parquet file (typed), `chunk_rows` at most."""
    path = Path(path)
    if table_format(path, "input") == "csv":
        frames = iter_string_frames(
            path,
            table_columns(path, csv),
            delimiter=csv.delimiter,
            encoding=csv.encoding,
            block_bytes=block_bytes,
            frame_rows=chunk_rows,
            option_prefix=csv.option_prefix,
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
        for table in iter_parquet_tables(parquet, chunk_rows):
            yield table.to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ModelSphereError(f"{path}: cannot read Parquet data: {exc}") from exc


def iter_parquet_tables(
    parquet: pq.ParquetFile, rows: int, columns: Optional[List[str]] = None
) -> Iterator[pa.Table]:
    """The file's rows in tables of `rows` rows (the last may be shorter), read one
    row group at a time: memory is bounded by the largest row group plus one table.

    (pyarrow's `ParquetFile.iter_batches` keeps memory across row groups: on a
    10M-row file its allocations grew to 630 MB by the end, with pyarrow 26.)
    """
    pending: List[pa.Table] = []
    pending_rows = 0
    for index in range(parquet.num_row_groups):
        group = parquet.read_row_group(index, columns=columns)
        pending.append(group)
        pending_rows += group.num_rows
        while pending_rows >= rows:
            buffered = pa.concat_tables(pending)
            yield buffered.slice(0, rows)
            pending = [buffered.slice(rows)]
            pending_rows -= rows
    if pending_rows:
        yield pa.concat_tables(pending)


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
