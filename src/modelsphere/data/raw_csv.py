"""Reading CSV files in bounded memory, every column as text.

Raw CSVs are read as strings and typed by our own cleaning code, so that a column
whose first block looks numeric and whose later rows hold text does not crash the
reader half-way through a large file, and so that every bad value can be reported
with its column and row.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import re
from pathlib import Path
from typing import Iterator, List

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from modelsphere.core.errors import ModelSphereError

log = logging.getLogger(__name__)

DEFAULT_BLOCK_BYTES = 1 << 20
DEFAULT_FRAME_ROWS = 65_536
HEADER_MAX_BYTES = 8 << 20  # the header row is read from this much at most
# Strings that mean "missing" in a raw CSV (whitespace-only cells are missing too).
NULL_STRINGS = ["", "NA", "N/A", "n/a", "NaN", "nan", "NULL", "null", "None", "?"]


def _python_encoding(encoding: str) -> str:
    try:
        name = codecs.lookup(encoding).name
    except LookupError as exc:
        raise ModelSphereError(f"unknown encoding {encoding!r}") from exc
    # utf-8-sig strips a byte-order mark if there is one.
    return "utf-8-sig" if name == "utf-8" else name


def _first_record(path: Path, delimiter: str, py_encoding: str) -> List[str]:
    """The first CSV record, read from at most HEADER_MAX_BYTES: a file with no
    line end (a binary file, a wrong delimiter on a one-line dump) is refused
    without being read whole."""
    with open(path, "rb") as handle:
        prefix = handle.read(HEADER_MAX_BYTES)
        truncated = bool(handle.read(1))
    # A multi-byte character cut at the end of the prefix is left out, not an error.
    text = codecs.getincrementaldecoder(py_encoding)().decode(prefix, final=False)
    stream = io.StringIO(text, newline="")
    header = next(csv.reader(stream, delimiter=delimiter), [])
    ended = stream.tell() < len(text) or text.endswith(("\n", "\r"))
    if truncated and not ended:
        raise ModelSphereError(
            f"{path}: the header row does not end within the first "
            f"{HEADER_MAX_BYTES >> 20} MiB (no line end): is it a CSV file?"
        )
    return header


def read_header(
    path: str | Path,
    delimiter: str = ",",
    encoding: str = "utf8",
    option_prefix: str = "data.",
) -> List[str]:
    """The column names of a CSV file, checked: non-empty, unique."""
    path = Path(path)
    if not path.exists():
        raise ModelSphereError(f"file not found: {path}")
    if not path.is_file():
        raise ModelSphereError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise ModelSphereError(f"{path} is empty (0 bytes): expected a header row")
    try:
        header = _first_record(path, delimiter, _python_encoding(encoding))
    except UnicodeDecodeError as exc:
        raise ModelSphereError(
            f"{path} is not valid {encoding} text ({exc.reason} at byte {exc.start}); "
            f"set {option_prefix}encoding (e.g. {option_prefix}encoding=latin-1)"
        ) from exc
    except csv.Error as exc:
        raise ModelSphereError(f"{path}: cannot parse the header row: {exc}") from exc
    if not header or all(not name.strip() for name in header):
        raise ModelSphereError(f"{path}: the first row is blank; expected column names")
    names = []
    for position, name in enumerate(header):
        name = name.strip()
        if not name:
            name = f"unnamed_{position}"
            log.warning(
                "%s: column %d has no name; calling it %r", path, position + 1, name
            )
        names.append(name)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ModelSphereError(
            f"{path}: duplicate column names {duplicates}; column names must be unique"
        )
    return names


def iter_string_frames(
    path: str | Path,
    columns: List[str],
    delimiter: str = ",",
    encoding: str = "utf8",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    frame_rows: int = DEFAULT_FRAME_ROWS,
    option_prefix: str = "data.",
) -> Iterator[pd.DataFrame]:
    """Yield the rows of a CSV as DataFrames of strings (missing cells as NA),
    about `frame_rows` rows at a time.

    pyarrow parses `block_bytes` at a time and reads a few dozen blocks ahead, so
    its memory grows with the block size (about 580 MB at 16 MiB blocks, 36 MB at
    1 MiB on a 1 GB file); small blocks are then gathered into frames of
    `frame_rows`, so per-frame pandas work stays efficient. Memory is bounded by
    both, whatever the file size. `option_prefix` is how the caller's config
    names the delimiter and encoding options, for the hints in error messages.
    """
    path = Path(path)
    py_encoding = _python_encoding(encoding)
    read_options = pacsv.ReadOptions(
        column_names=columns,
        skip_rows=1,
        block_size=block_bytes,
        encoding="utf8" if py_encoding in ("utf-8", "utf-8-sig") else py_encoding,
    )
    parse_options = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    convert_options = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in columns},
        null_values=NULL_STRINGS,
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    try:
        reader = pacsv.open_csv(
            path,
            read_options=read_options,
            parse_options=parse_options,
            convert_options=convert_options,
        )
        pending: List[pa.RecordBatch] = []
        pending_rows = 0
        for batch in reader:
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= frame_rows:
                yield pa.Table.from_batches(pending).to_pandas()
                pending, pending_rows = [], 0
        if pending_rows:
            yield pa.Table.from_batches(pending).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        message = str(exc).split("\n")[0]
        if "Expected" in message and "columns" in message:
            message += (
                f" (the header has {len(columns)}; is {option_prefix}delimiter right?)"
            )
        bad_text = re.search(r"CSV column #(\d+).*invalid UTF8", message)
        if bad_text and int(bad_text.group(1)) < len(columns):
            column = columns[int(bad_text.group(1))]
            message = (
                f"column {column!r} holds invalid UTF8 text for encoding "
                f"{encoding!r}; set {option_prefix}encoding "
                f"(e.g. {option_prefix}encoding=latin-1)"
            )
        raise ModelSphereError(f"{path}: cannot parse CSV: {message}") from exc
    except OSError as exc:
        raise ModelSphereError(f"cannot read {path}: {exc}") from exc
