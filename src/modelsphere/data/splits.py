"""The processed split files: their typed layout, the writers preprocessing
fills, and the readers training, evaluation and the benchmarks stream them back
with (Parquet row groups or CSV blocks, typed by the schema either way)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modelsphere.core.errors import ModelSphereError
from modelsphere.data.schema import Schema
from modelsphere.data.formats import format_named

SPLITS = ("train", "val", "test")
# Rows per chunk when a split is streamed back (fitting the features, making
# tensors): the temporaries of reading and transforming a chunk grow with it. On
# 1M rows x 64 columns, chunks of 131,072 rows peaked ~570 MiB above the
# libraries while fitting and ~460 MiB above the tensors while loading; chunks
# of 32,768 rows ~375 and ~270, with the same fitted state, and made the train
# split's tensors faster (7.2 s against 9.5-10.0 s).
SPLIT_CHUNK_ROWS = 32_768


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

    def split_rows(self, split: str) -> int:
        return int(self.manifest["splits"][split]["rows"])

    def stored_rows(self, split: str) -> Optional[int]:
        """The rows the split file itself says it holds (Parquet's footer; None
        for CSV, where only reading it all would tell)."""
        return format_named(self.format).rows(_checked_split_path(self, split))


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


class SplitWriters:
    """One writer per split, in the data's format. Rows are buffered until they
    fill a row group of `data.write_row_group_rows`, so row groups have that size
    whatever the frame size and split fractions (formats without row groups
    just get their rows in those batches)."""

    def __init__(self, directory: Path, fmt: str, schema: pa.Schema, data_cfg: Any):
        self.schema = schema
        self.row_group_rows = data_cfg.write_row_group_rows
        self.paths = {split: directory / f"{split}.{fmt}" for split in SPLITS}
        self.writers = {
            split: format_named(fmt).open_writer(
                path, schema, data_cfg.compression, self.row_group_rows
            )
            for split, path in self.paths.items()
        }
        self.rows = Counter()
        self.pending: Dict[str, List[pa.Table]] = {split: [] for split in SPLITS}

    def write(self, split: str, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
        self.rows[split] += len(frame)
        self.pending[split].append(table)
        buffered = sum(part.num_rows for part in self.pending[split])
        if buffered >= self.row_group_rows:
            self._flush(split, buffered - buffered % self.row_group_rows)

    def _flush(self, split: str, rows: int) -> None:
        buffered = pa.concat_tables(self.pending[split])
        self.writers[split].write(buffered.slice(0, rows))
        self.pending[split] = [buffered.slice(rows)] if rows < len(buffered) else []

    def finish(self) -> None:
        """Write the rows still buffered (the last, shorter row group)."""
        for split in SPLITS:
            if self.pending[split]:
                self._flush(split, sum(part.num_rows for part in self.pending[split]))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _split_frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)


def read_split_columns(
    path: Path, schema: Schema, fmt: str, columns: Optional[List[str]] = None
) -> pd.DataFrame:
    """Read a processed split (or some of its columns) with the schema's types."""
    layout = arrow_schema(schema)
    names = columns or layout.names
    return _split_frame(format_named(fmt).read_typed(path, layout, names))


def iter_split_columns(
    path: Path,
    schema: Schema,
    fmt: str,
    columns: Optional[List[str]] = None,
    chunk_rows: int = SPLIT_CHUNK_ROWS,
    rows: Optional[range] = None,
) -> Iterator[pd.DataFrame]:
    """A processed split (or some of its columns; only the rows at positions
    `rows`, a contiguous range, when given) as frames typed like
    `read_split_columns`, `chunk_rows` rows each (Parquet, read a row group at a
    time) or one 1 MiB block each (CSV); no rows give one empty frame."""
    layout = arrow_schema(schema)
    names = columns or layout.names
    empty = True
    tables = format_named(fmt).iter_typed(path, layout, names, chunk_rows, rows)
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
    rows: Optional[range] = None,
) -> Iterator[pd.DataFrame]:
    """`load_split` in chunks of at most `chunk_rows` rows, in bounded memory;
    with `rows` (a contiguous range of positions), only those rows are read."""
    path = _checked_split_path(processed, split)
    return iter_split_columns(
        path, processed.schema, processed.format, columns, chunk_rows, rows
    )


def load_split(processed: ProcessedData, split: str) -> pd.DataFrame:
    path = _checked_split_path(processed, split)
    return read_split_columns(path, processed.schema, processed.format)


def split_row_groups(processed: ProcessedData, split: str) -> List[int]:
    """The rows of each Parquet row group of a split, in file order (read from
    the file's footer, not its data)."""
    path = _checked_split_path(processed, split)
    if not format_named(processed.format).row_groups:
        raise ModelSphereError(
            f"{path}: a {processed.format} split has no row groups to stream; "
            "write the splits as Parquet (data.format=parquet) and run "
            "data_preprocessing.py again"
        )
    metadata = pq.ParquetFile(path).metadata
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


def read_row_groups(
    processed: ProcessedData,
    split: str,
    groups: List[int],
    columns: Optional[List[str]] = None,
) -> pd.DataFrame:
    """Some row groups of a Parquet split (in the order given), typed like
    `read_split_columns`."""
    path = _checked_split_path(processed, split)
    layout = arrow_schema(processed.schema)
    names = columns or layout.names
    parquet = pq.ParquetFile(path)
    tables = [parquet.read_row_group(group, columns=names) for group in groups]
    if not tables:
        return _split_frame(pa.schema([layout.field(n) for n in names]).empty_table())
    return _split_frame(pa.concat_tables(tables))
