"""Table file formats, one class each: what the processed splits and the user's
input and output tables can be stored as.

A format says which file suffixes it owns and how to write a table, how to read
a typed table back (a processed split, typed by its arrow layout) and how to
stream a user's file (its column names, then frames of at most `chunk_rows`
rows): `TableFormat` lists the calls. `FORMATS` holds one of each; `data.format`
accepts its keys and predict.py picks one by suffix. A new format is one
subclass here, added to `FORMATS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from modelsphere.core.errors import ModelSphereError
from modelsphere.data.raw_csv import iter_string_frames, read_header

COMPRESSION = "zstd"  # Parquet's codec, for the splits and predict.py's output
CSV_READ_BLOCK_BYTES = 1 << 20  # pyarrow's block when a typed CSV is streamed


@dataclass(frozen=True)
class CsvOptions:
    """How to parse an input CSV, and the config prefix its error hints name
    (`encoding=latin-1` for predict.py, `data.encoding=latin-1` for the data group).
    """

    delimiter: str = ","
    encoding: str = "utf8"
    option_prefix: str = ""


class FormatWriter:
    """Appends tables with one schema to one file; `close()` finishes it."""

    def __init__(self, writer, row_group_rows: Optional[int] = None):
        self._writer, self._row_group_rows = writer, row_group_rows

    def write(self, table: pa.Table) -> None:
        if self._row_group_rows is None:
            self._writer.write_table(table)
        else:
            self._writer.write_table(table, row_group_size=self._row_group_rows)

    def close(self) -> None:
        self._writer.close()


class TableFormat:
    """What a format provides; each subclass fills in the format's own calls."""

    name: str
    suffixes: tuple
    row_groups = False  # whether its writer takes a row-group size

    def open_writer(
        self,
        path: Path,
        schema: pa.Schema,
        compression: str = COMPRESSION,
        row_group_rows: Optional[int] = None,
    ) -> FormatWriter:
        writer = self._writer(path, schema, compression)
        return FormatWriter(writer, row_group_rows if self.row_groups else None)

    def _writer(self, path: Path, schema: pa.Schema, compression: str):
        raise NotImplementedError

    def read_typed(self, path: Path, layout: pa.Schema, names: List[str]) -> pa.Table:
        """A processed split's `names` columns, typed by `layout`."""
        raise NotImplementedError

    def iter_typed(
        self,
        path: Path,
        layout: pa.Schema,
        names: List[str],
        chunk_rows: int,
        rows: Optional[range] = None,
    ) -> Iterator[pa.Table]:
        """The same, a chunk at a time, in bounded memory; with `rows` (a
        contiguous range of row positions), only those rows."""
        raise NotImplementedError

    def columns(self, path: Path, csv: CsvOptions) -> List[str]:
        """A user's file's column names."""
        raise NotImplementedError

    def nested_columns(self, path: Path) -> Dict[str, str]:
        """A user's file's columns of a nested type (lists, structs, maps), with
        their type: none in a format that has no such types."""
        return {}

    def rows(self, path: Path) -> Optional[int]:
        """A user's file's row count where its metadata says it (None: only
        reading it all would tell)."""
        return None

    def frames(
        self, path: Path, chunk_rows: int, block_bytes: int, csv: CsvOptions
    ) -> Iterator[pd.DataFrame]:
        """A user's file's rows, at most `chunk_rows` per frame."""
        raise NotImplementedError


class ParquetFormat(TableFormat):
    name = "parquet"
    suffixes = (".parquet", ".pq")
    row_groups = True

    def _writer(self, path: Path, schema: pa.Schema, compression: str):
        return pq.ParquetWriter(path, schema, compression=compression)

    def read_typed(self, path: Path, layout: pa.Schema, names: List[str]) -> pa.Table:
        return pq.read_table(path, columns=names)

    def iter_typed(
        self,
        path: Path,
        layout: pa.Schema,
        names: List[str],
        chunk_rows: int,
        rows: Optional[range] = None,
    ) -> Iterator[pa.Table]:
        """Only the row groups that hold some of `rows` are read."""
        return iter_parquet_tables(pq.ParquetFile(path), chunk_rows, names, rows)

    def columns(self, path: Path, csv: CsvOptions) -> List[str]:
        return list(_parquet_file(path).schema_arrow.names)

    def rows(self, path: Path) -> Optional[int]:
        return _parquet_file(path).metadata.num_rows

    def nested_columns(self, path: Path) -> Dict[str, str]:
        schema = _parquet_file(path).schema_arrow
        return {
            field.name: str(field.type)
            for field in schema
            if pa.types.is_nested(field.type)
        }

    def frames(
        self, path: Path, chunk_rows: int, block_bytes: int, csv: CsvOptions
    ) -> Iterator[pd.DataFrame]:
        """The file's rows as typed frames."""
        parquet = _parquet_file(path)
        try:
            for table in iter_parquet_tables(parquet, chunk_rows):
                yield table.to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise ModelSphereError(f"{path}: cannot read Parquet data: {exc}") from exc


class CsvFormat(TableFormat):
    name = "csv"
    suffixes = (".csv",)

    def _writer(self, path: Path, schema: pa.Schema, compression: str):
        return pacsv.CSVWriter(str(path), schema)

    def read_typed(self, path: Path, layout: pa.Schema, names: List[str]) -> pa.Table:
        return pacsv.read_csv(path, convert_options=_typed_csv(layout, names))

    def iter_typed(
        self,
        path: Path,
        layout: pa.Schema,
        names: List[str],
        chunk_rows: int,
        rows: Optional[range] = None,
    ) -> Iterator[pa.Table]:
        """One table per CSV block (`chunk_rows` does not apply to CSV); the
        blocks before `rows` are parsed too (a CSV has no row index)."""
        batches = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=CSV_READ_BLOCK_BYTES),
            convert_options=_typed_csv(layout, names),
        )
        return rows_within((pa.Table.from_batches([b]) for b in batches), rows)

    def columns(self, path: Path, csv: CsvOptions) -> List[str]:
        return read_header(path, csv.delimiter, csv.encoding, csv.option_prefix)

    def frames(
        self, path: Path, chunk_rows: int, block_bytes: int, csv: CsvOptions
    ) -> Iterator[pd.DataFrame]:
        """The file's rows as text: typing is the caller's (data/cleaning.py)."""
        return iter_string_frames(
            path,
            self.columns(path, csv),
            delimiter=csv.delimiter,
            encoding=csv.encoding,
            block_bytes=block_bytes,
            frame_rows=chunk_rows,
            option_prefix=csv.option_prefix,
        )


FORMATS: Dict[str, TableFormat] = {
    fmt.name: fmt for fmt in (ParquetFormat(), CsvFormat())
}


def format_named(name: str) -> TableFormat:
    """The format `data.format` names (checked by the config before any work)."""
    return FORMATS[name]


def format_of(path: str | Path, role: str) -> TableFormat:
    """The format of a user's file, by its suffix; `role` names the setting."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    known = " or ".join(sorted(fmt.suffixes[0] for fmt in FORMATS.values()))
    raise ModelSphereError(
        f"{role}={path}: unsupported file type {suffix or '(none)'!r}; use {known}"
    )


def _typed_csv(layout: pa.Schema, names: List[str]) -> pacsv.ConvertOptions:
    return pacsv.ConvertOptions(
        column_types={name: layout.field(name).type for name in names},
        include_columns=names,
        null_values=[""],
        strings_can_be_null=True,
    )


def _parquet_file(path: Path) -> pq.ParquetFile:
    if not path.is_file():
        raise ModelSphereError(f"file not found: {path}")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ModelSphereError(f"{path} is not a readable Parquet file: {exc}") from exc


def _overlap(start: int, end: int, rows: range) -> Optional[Tuple[int, int]]:
    """Where rows [start, end) of a file meet `rows`: (offset from start,
    length), or None."""
    first, stop = max(rows.start, start), min(rows.stop, end)
    return (first - start, stop - first) if first < stop else None


def _contiguous(rows: range) -> range:
    if rows.step != 1:
        raise ValueError(f"rows must be a contiguous range, not {rows}")
    return rows


def rows_within(
    tables: Iterable[pa.Table], rows: Optional[range] = None
) -> Iterator[pa.Table]:
    """The rows at positions `rows` (None: all) of a file given as consecutive
    tables, stopping at the first table past them."""
    if rows is None:
        yield from tables
        return
    rows, start = _contiguous(rows), 0
    for table in tables:
        end = start + table.num_rows
        part = _overlap(start, end, rows)
        if part is not None:
            yield table.slice(*part)
        if end >= rows.stop:
            return
        start = end


def _row_groups(
    parquet: pq.ParquetFile, columns: Optional[List[str]], rows: Optional[range]
) -> Iterator[pa.Table]:
    """The file's row groups in order, cut to `rows` (None: all): a group that
    holds none of them is not read (the footer has each group's row count)."""
    if rows is None:
        rows = range(parquet.metadata.num_rows)
    rows, start = _contiguous(rows), 0
    for index in range(parquet.num_row_groups):
        end = start + parquet.metadata.row_group(index).num_rows
        part = _overlap(start, end, rows)
        if part is not None:
            group = parquet.read_row_group(index, columns=columns)
            yield group if part == (0, group.num_rows) else group.slice(*part)
        if end >= rows.stop:
            return
        start = end


def iter_parquet_tables(
    parquet: pq.ParquetFile,
    rows: int,
    columns: Optional[List[str]] = None,
    positions: Optional[range] = None,
) -> Iterator[pa.Table]:
    """The file's rows (only those at `positions`, when given) in tables of
    `rows` rows (the last may be shorter), read one row group at a time: memory
    is bounded by the largest row group plus one table.

    (pyarrow's `ParquetFile.iter_batches` keeps memory across row groups: on a
    10M-row file its allocations grew to 630 MB by the end, with pyarrow 26.)
    """
    pending: List[pa.Table] = []
    pending_rows = 0
    for group in _row_groups(parquet, columns, positions):
        pending.append(group)
        pending_rows += group.num_rows
        while pending_rows >= rows:
            buffered = pa.concat_tables(pending)
            yield buffered.slice(0, rows)
            pending = [buffered.slice(rows)]
            pending_rows -= rows
    if pending_rows:
        yield pa.concat_tables(pending)
