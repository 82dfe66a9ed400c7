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
from collections import Counter
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
HEADER_CHUNK_BYTES = 8 << 10  # ...in chunks from this size, doubled each time
# Appended to test whether the first record has ended (two, in case one is the
# delimiter; not NUL, which Python 3.10's csv refuses).
HEADER_SENTINELS = ("\x02", "\x03")
NAMES_SHOWN = 10  # column names or positions an error or warning lists
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
    """The first CSV record, decoded from as little of the file as it needs: the
    first HEADER_CHUNK_BYTES, doubled until the record ends, HEADER_MAX_BYTES at
    most. A file with no line end (a binary file, a one-line dump) is refused
    without being read whole, and a bad byte past the header is left to the
    body's reader, which names its column."""
    decoder = codecs.getincrementaldecoder(py_encoding)()
    text, read, size = "", 0, HEADER_CHUNK_BYTES
    file_bytes = path.stat().st_size
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(min(size, HEADER_MAX_BYTES - read))
            read += len(chunk)
            at_end = len(chunk) == 0 or read == file_bytes
            # A multi-byte character cut at the chunk's end waits for the next one.
            text += decoder.decode(chunk, final=at_end)
            header = _parse_first(text, delimiter)
            sentinel = next(c for c in HEADER_SENTINELS if c != delimiter)
            if at_end or header == _parse_first(text + sentinel, delimiter):
                return header  # more text would not change it: the record ended
            if read >= HEADER_MAX_BYTES:
                raise ModelSphereError(
                    f"{path}: the header row does not end within the first "
                    f"{HEADER_MAX_BYTES >> 20} MiB (no line end): is it a CSV file?"
                )
            size *= 2


def _parse_first(text: str, delimiter: str) -> List[str]:
    return next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])


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
    # Linear in the number of columns: a header row may hold millions of them.
    names = [
        name.strip() or f"unnamed_{position}" for position, name in enumerate(header)
    ]
    unnamed = [position + 1 for position, name in enumerate(header) if not name.strip()]
    if unnamed:
        log.warning(
            "%s: %d column(s) have no name (column %s); each is called "
            "unnamed_<position - 1>",
            path,
            len(unnamed),
            ", ".join(str(position) for position in unnamed[:NAMES_SHOWN]),
        )
    counts = Counter(names)
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        shown = duplicates[:NAMES_SHOWN]
        more = (
            f" and {len(duplicates) - NAMES_SHOWN} more"
            if len(duplicates) > NAMES_SHOWN
            else ""
        )
        raise ModelSphereError(
            f"{path}: duplicate column names {shown}{more}; column names must be unique"
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
