"""End to end: data_preprocessing.py + train.py train=quick, CSV vs Parquet splits."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List

from benchmarks.processes import compose_config, data_overrides, measured

FORMATS = ("parquet", "csv")


def end_to_end(rows: int, repeats: int, work: Path) -> Dict[str, Any]:
    """data_preprocessing.py + train.py train=quick, per format, same raw CSV."""
    from modelsphere.data.sources import materialise_raw_csv

    print(f"{rows:,} rows end to end", flush=True)
    dirs = {fmt: work / f"e2e_{fmt}" for fmt in FORMATS}
    raw = materialise_raw_csv(compose_config(rows, dirs["parquet"]).data)
    copy = dirs["csv"] / "data" / "raw"
    copy.mkdir(parents=True, exist_ok=True)
    for path in (raw, raw.with_name(raw.name + ".json")):
        os.link(path, copy / path.name)
    runs: Dict[str, List[Dict[str, Any]]] = {fmt: [] for fmt in FORMATS}
    for repeat in range(repeats):
        for fmt in FORMATS if repeat % 2 == 0 else FORMATS[::-1]:
            overrides = data_overrides(rows, dirs[fmt], fmt)
            pre = measured([sys.executable, "data_preprocessing.py", *overrides])
            train = measured(
                [sys.executable, "train.py", "train=quick", "device=cpu", *overrides]
            )
            runs[fmt].append(
                {
                    "preprocess_seconds": pre["process_seconds"],
                    "preprocess_peak_rss_mib": pre["peak_rss_mib"],
                    "train_seconds": train["process_seconds"],
                    "train_peak_rss_mib": train["peak_rss_mib"],
                    "total_seconds": pre["process_seconds"] + train["process_seconds"],
                }
            )
            print(f"  {fmt} run {repeat + 1}: {runs[fmt][-1]}", flush=True)
    formats = {}
    for fmt in FORMATS:
        (manifest,) = (dirs[fmt] / "data" / "processed").glob("*/manifest.json")
        split_files = manifest.parent.glob(f"*.{fmt}")
        formats[fmt] = {key: median(runs[fmt], key) for key in runs[fmt][0]}
        formats[fmt]["processed_split_bytes"] = sum(
            path.stat().st_size for path in split_files
        )
        formats[fmt]["runs"] = runs[fmt]
    for path in dirs.values():
        shutil.rmtree(path)
    return {
        "rows": rows,
        "repeats": repeats,
        "command": "data_preprocessing.py, then train.py train=quick device=cpu",
        "formats": formats,
        "ratio_csv_over_parquet_total_seconds": formats["csv"]["total_seconds"]
        / formats["parquet"]["total_seconds"],
    }


def median(runs: List[Dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)
