"""Parquet vs CSV for the processed splits: size, speed, memory, types, end to end.

    python -m benchmarks.storage_formats       # 100k, 1M (3 runs), 10M (1 run); e2e
    python -m benchmarks.storage_formats --repeats 5 --e2e-rows 100000 1000000
    python -m benchmarks.storage_formats --rows 2000 --repeats 1 --e2e-rows 2000

The table is the package's own synthetic data (`data=synthetic`: an id, 8 numeric
columns, 3 categorical columns with 12 levels, 2% missing cells, a binary target),
generated as a raw CSV by `materialise_raw_csv` and typed with the schema that
`data_preprocessing.py` infers for it (id and categories as strings, numbers as
float64). For each size and format:

- file size, and write time (in this process, with the pipeline's own settings:
  zstd Parquet with `data.write_row_group_rows` row groups, pyarrow's CSV writer);
- full read and a 3-column read with the pipeline's typed reader
  (`read_split_columns`, which hands CSV the schema's column types), the same
  typed full read stopping at the Arrow table (no conversion to pandas), and a
  full read with plain pandas (`read_csv` / `read_parquet`, no schema): each read is
  its own process under `/usr/bin/time -v` (peak RSS = "Maximum resident set
  size"), timed around the read itself; a process that only imports gives the
  baseline RSS;
- whether column types survive: the kind (float, integer, string) of each column
  after each reader, against the typed table; values are compared exactly at the
  smallest size.

End to end, `python data_preprocessing.py` then `python train.py train=quick
device=cpu` on the same generated raw CSV with `data.format=csv` and
`data.format=parquet`, each as a user runs them (wall-clock seconds of the whole
process). Formats alternate within each repeat; figures are medians. Results:
benchmarks/results/storage_formats.{json,md}, with machine, versions, date and
load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from benchmarks.common import add_output_arguments, machine, write_results
from benchmarks.processes import GNU_TIME, compose_config, measured
from benchmarks.storage_end_to_end import end_to_end
from benchmarks.storage_markdown import render_markdown
from modelsphere.core.provenance import package_versions

CHILD = Path(__file__).resolve().parent / "storage_read_child.py"
FORMATS = ("parquet", "csv")
SCHEMA_ROWS = 5_000  # rows preprocessed to learn the schema (same for every size)
LARGE_ROWS = 5_000_000  # sizes from here on run --large-repeats times
E2E_LARGE_ROWS = 1_000_000  # end-to-end sizes from here on: --e2e-large-repeats
THREE_COLUMNS = ["num_0", "cat_0", "target"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--large-repeats",
        type=int,
        default=1,
        help=f"runs per measurement for sizes of {LARGE_ROWS:,} rows and more",
    )
    parser.add_argument(
        "--e2e-rows",
        type=int,
        nargs="*",
        default=[100_000],
        help="sizes for preprocess + train end to end (none: skip)",
    )
    parser.add_argument("--e2e-repeats", type=int, default=3)
    parser.add_argument(
        "--e2e-large-repeats",
        type=int,
        default=1,
        help=f"end-to-end runs for sizes of {E2E_LARGE_ROWS:,} rows and more",
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    add_output_arguments(parser, "storage_formats")
    return parser.parse_args(argv)


def learn_schema(work: Path) -> Path:
    """schema.json as data_preprocessing.py infers it for this table."""
    from modelsphere.data.preprocessing import prepare_data

    cfg = compose_config(SCHEMA_ROWS, work / "schema")
    processed = prepare_data(cfg.data, cfg.paths.data_dir, force=True)
    return processed.directory / "schema.json"


def typed_table(rows: int, work: Path, schema_path: Path):
    """The generated raw CSV, typed as a processed split; and the pipeline's
    Parquet settings (compression, row-group rows) from the same config."""
    from modelsphere.data.raw_csv import NULL_STRINGS
    from modelsphere.data.schema import Schema
    from modelsphere.data.sources import materialise_raw_csv
    from modelsphere.data.splits import arrow_schema

    cfg = compose_config(rows, work / "raw")
    raw = materialise_raw_csv(cfg.data)
    layout = arrow_schema(Schema.from_dict(json.loads(schema_path.read_text())))
    options = pacsv.ConvertOptions(
        column_types={field.name: field.type for field in layout},
        include_columns=layout.names,
        null_values=NULL_STRINGS,
        strings_can_be_null=True,
    )
    table = pacsv.read_csv(raw, convert_options=options).select(layout.names)
    settings = {
        "compression": cfg.data.compression,
        "row_group_rows": cfg.data.write_row_group_rows,
    }
    return table, raw.stat().st_size, settings


def write(table: pa.Table, fmt: str, path: Path, settings: Dict[str, Any]) -> float:
    started = time.perf_counter()
    if fmt == "parquet":
        pq.write_table(
            table,
            path,
            compression=settings["compression"],
            row_group_size=settings["row_group_rows"],
        )
    else:
        pacsv.write_csv(table, path)
    return time.perf_counter() - started


def read_in_child(
    reader: str, fmt: str, path: Path, schema_path: Path, columns=()
) -> Dict[str, Any]:
    command = [sys.executable, str(CHILD), reader, fmt, str(path), str(schema_path)]
    run = measured(command + list(columns))
    child = json.loads(run.pop("stdout").strip().splitlines()[-1])
    return {**run, **child}


def kind(dtype: str) -> str:
    """A dtype's kind, the level at which a round trip keeps or loses a type."""
    if dtype.startswith(("float", "Float")):
        return "float"
    if dtype.startswith(("int", "Int", "uint", "UInt")):
        return "integer"
    if dtype in ("object", "str", "string") or dtype.startswith("string"):
        return "string"
    return dtype


def changed_kinds(reference: Dict[str, str], got: Dict[str, str]) -> Dict[str, str]:
    return {
        name: f"{kind(reference[name])} -> {kind(dtype)}"
        for name, dtype in got.items()
        if kind(reference[name]) != kind(dtype)
    }


def reference_frame(table: pa.Table) -> pd.DataFrame:
    """The typed table as the pipeline's reader returns a split."""
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)


def values_round_trip(paths, schema_path: Path, reference: pd.DataFrame):
    """Whether each format gives back exactly the written values (pipeline reader)."""
    from modelsphere.data.schema import Schema
    from modelsphere.data.splits import read_split_columns

    schema = Schema.from_dict(json.loads(schema_path.read_text()))
    equal = {}
    for fmt, path in paths.items():
        frame = read_split_columns(path, schema, fmt)
        equal[fmt] = bool(frame.equals(reference))
    return equal


READS = {
    "full": ("pipeline", ()),
    "three_columns": ("pipeline", tuple(THREE_COLUMNS)),
    "arrow_full": ("arrow", ()),
    "plain_pandas_full": ("plain", ()),
}
TYPE_CHECKED_READERS = ("pipeline", "plain")  # the readers that return pandas


def measure_size(rows, repeats, work, schema_path, check_values) -> Dict[str, Any]:
    print(f"{rows:,} rows: generating and typing the table", flush=True)
    table, raw_bytes, settings = typed_table(rows, work, schema_path)
    reference = reference_frame(table.slice(0, 1))
    reference_dtypes = {name: str(dtype) for name, dtype in reference.dtypes.items()}
    paths = {fmt: work / f"table_{rows}.{fmt}" for fmt in FORMATS}
    runs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {fmt: {} for fmt in FORMATS}
    for repeat in range(repeats):
        order = FORMATS if repeat % 2 == 0 else FORMATS[::-1]
        for fmt in order:
            seconds = write(table, fmt, paths[fmt], settings)
            runs[fmt].setdefault("write", []).append({"seconds": seconds})
            for name, (reader, columns) in READS.items():
                run = read_in_child(reader, fmt, paths[fmt], schema_path, columns)
                runs[fmt].setdefault(name, []).append(run)
            print(f"  {fmt} run {repeat + 1}: write {seconds:.2f}s", flush=True)
    formats = {}
    for fmt in FORMATS:
        formats[fmt] = summarise_format(
            rows, paths[fmt].stat().st_size, runs[fmt], reference_dtypes
        )
    if check_values:
        values = values_round_trip(paths, schema_path, reference_frame(table))
        for fmt in FORMATS:
            formats[fmt]["values_round_trip_exact"] = values[fmt]
    del table
    for path in [*paths.values(), *work.glob("raw")]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return {
        "rows": rows,
        "repeats": repeats,
        "raw_csv_bytes": raw_bytes,
        "pipeline_settings": settings,
        "reference_dtypes": reference_dtypes,
        "formats": formats,
        "ratios_csv_over_parquet": ratios(formats),
    }


def summarise_format(rows, file_bytes, runs, reference_dtypes) -> Dict[str, Any]:
    summary: Dict[str, Any] = {
        "file_bytes": file_bytes,
        "bytes_per_row": file_bytes / rows,
        "write_seconds": median(runs["write"], "seconds"),
        "write_runs": [run["seconds"] for run in runs["write"]],
        "reads": {},
        "types_changed": {},
    }
    for name in READS:
        reads = runs[name]
        summary["reads"][name] = {
            "seconds": median(reads, "seconds"),
            "process_seconds": median(reads, "process_seconds"),
            "peak_rss_mib": median(reads, "peak_rss_mib"),
            "rows": reads[0]["rows"],
            "runs": [
                {
                    key: run[key]
                    for key in ("seconds", "process_seconds", "peak_rss_mib")
                }
                for run in reads
            ],
        }
        reader = READS[name][0]
        if reader in TYPE_CHECKED_READERS:
            summary["types_changed"].setdefault(
                reader, changed_kinds(reference_dtypes, reads[0]["dtypes"])
            )
        summary["reads"][name]["dtypes"] = reads[0]["dtypes"]
    return summary


def median(runs: List[Dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def ratios(formats: Dict[str, Any]) -> Dict[str, float]:
    csv, parquet = formats["csv"], formats["parquet"]
    out = {
        "file_bytes": csv["file_bytes"] / parquet["file_bytes"],
        "write_seconds": csv["write_seconds"] / parquet["write_seconds"],
    }
    for name in READS:
        for key in ("seconds", "peak_rss_mib"):
            out[f"{name}_{key}"] = csv["reads"][name][key] / parquet["reads"][name][key]
    return out


def main(argv=None) -> Dict[str, Any]:
    argv_used = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="storage_formats_"))
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = time.perf_counter()
    try:
        schema_path = learn_schema(work)
        baseline = read_in_child("imports", "parquet", work, schema_path)
        sizes = []
        for index, rows in enumerate(sorted(args.rows)):
            repeats = args.large_repeats if rows >= LARGE_ROWS else args.repeats
            sizes.append(measure_size(rows, repeats, work, schema_path, index == 0))
        e2e = [
            end_to_end(
                rows,
                args.e2e_large_repeats if rows >= E2E_LARGE_ROWS else args.e2e_repeats,
                work,
            )
            for rows in args.e2e_rows
        ]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    payload = {
        "benchmark": "storage_formats",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": package_versions(),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "wall_seconds": time.perf_counter() - started,
        "setup": {
            "command": " ".join(["python -m benchmarks.storage_formats", *argv_used]),
            "data": "data=synthetic: id, 8 numeric, 3 categorical (12 levels), "
            "2% missing, binary target",
            "rows": sorted(args.rows),
            "repeats": args.repeats,
            "large_repeats": args.large_repeats,
            "large_rows_from": LARGE_ROWS,
            "three_columns": THREE_COLUMNS,
            "e2e_rows": args.e2e_rows,
            "e2e_repeats": args.e2e_repeats,
            "e2e_large_repeats": args.e2e_large_repeats,
            "e2e_large_rows_from": E2E_LARGE_ROWS,
            "peak_rss_tool": GNU_TIME if Path(GNU_TIME).is_file() else "getrusage",
            "import_baseline_peak_rss_mib": baseline["peak_rss_mib"],
        },
        "sizes": sizes,
        "end_to_end": e2e,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.out, args.name, payload, render_markdown)
    print(f"wrote {args.out / args.name}.json and .md", flush=True)
    return payload


if __name__ == "__main__":
    main()
