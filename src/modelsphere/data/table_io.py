"""Input and output tables for prediction and evaluation, in chunks, in any of
the formats of formats.py (chosen by the file's suffix)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pandas as pd
import pyarrow as pa

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import atomic_path
from modelsphere.data.formats import CsvOptions, format_of
from modelsphere.data.raw_csv import DEFAULT_BLOCK_BYTES


def table_format(path: str | Path, role: str) -> str:
    """The name of a user's file's format, by its suffix."""
    return format_of(path, role).name


def table_columns(path: str | Path, csv: CsvOptions = CsvOptions()) -> List[str]:
    path = Path(path)
    return format_of(path, "input").columns(path, csv)


def nested_columns(path: str | Path) -> Dict[str, str]:
    """Columns of a nested type (Parquet lists, structs, maps) and their types."""
    path = Path(path)
    return format_of(path, "input").nested_columns(path)


def table_rows(path: str | Path) -> Optional[int]:
    """The row count a file's metadata gives (Parquet), else None (CSV)."""
    path = Path(path)
    return format_of(path, "input").rows(path)


def iter_table_chunks(
    path: str | Path,
    chunk_rows: int,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    csv: CsvOptions = CsvOptions(),
) -> Iterator[pd.DataFrame]:
    """Rows of a CSV (as strings) or Parquet file (typed), `chunk_rows` at most."""
    path = Path(path)
    frames = format_of(path, "input").frames(path, chunk_rows, block_bytes, csv)
    for frame in frames:
        for start in range(0, len(frame), chunk_rows):
            chunk = frame.iloc[start : start + chunk_rows]
            yield chunk.reset_index(drop=True)


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
        self._format = format_of(self.path, "output")
        self.format = self._format.name
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
            self._writer = self._format.open_writer(self._tmp, self._schema)
        self._writer.write(table.cast(self._schema))
