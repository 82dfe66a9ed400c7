"""One timed read of a stored table, run as its own process by storage_formats.py.

    python -m benchmarks.storage_read_child READER FORMAT PATH SCHEMA_JSON [COLUMN...]

READER is `pipeline` (the package's own typed reader, `read_split_columns`, with
the schema's column types, into pandas), `arrow` (the same typed read into an
Arrow table, without the conversion to pandas), `plain` (pandas' `read_csv` /
`read_parquet` with no schema) or `imports` (nothing read: the peak RSS of the
interpreter and imports). Prints one JSON line: seconds spent in the read, rows,
and each column's dtype.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from modelsphere.data.schema import Schema
from modelsphere.data.splits import arrow_schema, read_split_columns


def read(reader: str, fmt: str, path: Path, schema: Schema, columns):
    if reader == "pipeline":
        return read_split_columns(path, schema, fmt, columns or None)
    if reader == "arrow":
        return read_arrow(fmt, path, schema, columns)
    if reader == "plain":
        if fmt == "parquet":
            return pd.read_parquet(path, columns=columns or None)
        return pd.read_csv(path, usecols=columns or None)
    raise SystemExit(f"unknown reader {reader!r}")


def read_arrow(fmt: str, path: Path, schema: Schema, columns):
    """The typed read of `read_split_columns`, stopping at the Arrow table."""
    layout = arrow_schema(schema)
    names = columns or layout.names
    if fmt == "parquet":
        return pq.read_table(path, columns=names)
    options = pacsv.ConvertOptions(
        column_types={name: layout.field(name).type for name in names},
        include_columns=names,
        null_values=[""],
        strings_can_be_null=True,
    )
    return pacsv.read_csv(path, convert_options=options)


def main(argv) -> None:
    reader, fmt, path, schema_path, *columns = argv
    schema = Schema.from_dict(json.loads(Path(schema_path).read_text()))
    if reader == "imports":
        print(json.dumps({"seconds": 0.0, "rows": 0, "dtypes": {}}))
        return
    started = time.perf_counter()
    frame = read(reader, fmt, Path(path), schema, columns)
    seconds = time.perf_counter() - started
    if isinstance(frame, pd.DataFrame):
        dtypes = {name: str(dtype) for name, dtype in frame.dtypes.items()}
    else:
        dtypes = {field.name: str(field.type) for field in frame.schema}
    print(json.dumps({"seconds": seconds, "rows": len(frame), "dtypes": dtypes}))


if __name__ == "__main__":
    main(sys.argv[1:])
