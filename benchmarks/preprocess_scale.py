"""Out-of-core scaling: generation, preprocessing and predict.py at 1M and 10M rows.

    python -m benchmarks.preprocess_scale                    # 1M (3 runs), 10M (2 runs)
    python -m benchmarks.preprocess_scale --rows 20000 --repeats 1   # smoke size

Each step runs as its own process, as a user runs it, under `/usr/bin/time -v`
(peak RSS = "Maximum resident set size"; without GNU time, a wrapper process reads
its child's peak RSS from getrusage):

- generation: the synthetic raw CSV (`data=synthetic data.synthetic.rows=N`,
  8 numeric + 3 categorical columns, an id and a binary target), once per size;
- preprocessing: `python data_preprocessing.py data=synthetic
  data.synthetic.rows=N` on that CSV (it always rebuilds the splits);
- predict: `python predict.py` on an N-row Parquet file (the three processed
  splits, concatenated row group by row group) with a small model trained once
  on 5,000 rows of the same table (setup, not timed).

Seconds are wall-clock for the whole process (interpreter start and imports
included); rows/s divides the rows by them; repeated runs report the median.
Results go to benchmarks/results/preprocess_scale.{json,md}, with the machine,
package versions and the load average (other work on the machine slows the
timings; peak RSS does not depend on it). Generated data lives in a temporary
folder that is removed at the end (`--keep` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from benchmarks.common import REPO, add_output_arguments, run_record, write_results
from benchmarks.processes import GNU_TIME
from benchmarks.processes import measured as run_measured
from benchmarks.processes import predict_command, raw_csv_command

TARGET_PEAK_RSS_MIB = 2048  # the target at 10 million rows
TARGET_ROWS = 10_000_000
LARGE_ROWS = 5_000_000  # sizes from here on run --large-repeats times
MODEL_ROWS = 5_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, TARGET_ROWS])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--large-repeats",
        type=int,
        default=2,
        help=f"runs per step for sizes of {LARGE_ROWS:,} rows and more",
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    add_output_arguments(parser, "preprocess_scale")
    parser.add_argument("--label", default="", help="what code this measures")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="an earlier result of this script (e.g. of the previous code) to "
        "show beside this one",
    )
    return parser.parse_args()


def data_overrides(rows: int, work: Path) -> List[str]:
    return [
        "data=synthetic",
        f"data.synthetic.rows={rows}",
        f"paths.data_dir={work / 'data'}",
        f"paths.outputs_dir={work / 'outputs'}",
    ]


def measured(command: List[str], in_process: str = "") -> Dict[str, Any]:
    """Run `command` in the repo root; its wall seconds and peak RSS, and the
    seconds its own log reports (the first group of the regex `in_process`)."""
    result = run_measured(command)
    run = {"seconds": result["process_seconds"], "peak_rss_mib": result["peak_rss_mib"]}
    output = result["stdout"] + result["stderr"]
    found = re.search(in_process, output) if in_process else None
    if found:
        run["in_process_seconds"] = float(found.group(1))
    return run


def generate(rows: int, work: Path) -> Dict[str, Any]:
    """The raw CSV, written by the package's own generator in a fresh process."""
    return measured(raw_csv_command(data_overrides(rows, work)))


def preprocess(rows: int, work: Path) -> Dict[str, Any]:
    command = [sys.executable, "data_preprocessing.py", *data_overrides(rows, work)]
    return measured(command, r"processed \d+ rows in ([\d.]+)s")


def train_model(work: Path) -> Path:
    """A small model of the same table (setup for predict; not timed)."""
    overrides = data_overrides(MODEL_ROWS, work)
    overrides += ["train=quick", "model=mlp_small", "device=cpu"]
    subprocess.run(
        [sys.executable, "train.py", *overrides],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    runs = (work / "outputs" / "train").iterdir()
    return max(runs, key=lambda path: path.stat().st_mtime)


def predict_input(rows: int, work: Path) -> Path:
    """An N-row Parquet file: the processed splits, one row group at a time."""
    import pyarrow.parquet as pq

    (directory,) = (work / "data" / "processed").glob(_data_glob(rows))
    path = work / f"predict_input_{rows}.parquet"
    writer = None
    for split in ("train", "val", "test"):
        source = pq.ParquetFile(directory / f"{split}.parquet")
        for index in range(source.num_row_groups):
            group = source.read_row_group(index)
            if writer is None:
                writer = pq.ParquetWriter(path, group.schema, compression="zstd")
            writer.write_table(group)
    writer.close()
    return path


def predict(run_dir: Path, source: Path, work: Path) -> Dict[str, Any]:
    command = predict_command(
        run_dir, source, work / "scored.parquet", work / "outputs"
    )
    return measured(command, r"wrote .*?: \d+ rows in ([\d.]+)s")


def _data_glob(rows: int) -> str:
    return f"synthetic_binary_{rows}r_*"


def summarise(rows: int, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    seconds = statistics.median(run["seconds"] for run in runs)
    summary = {
        "rows": rows,
        "runs": runs,
        "seconds": seconds,
        "rows_per_second": rows / seconds,
        "peak_rss_mib": statistics.median(run["peak_rss_mib"] for run in runs),
        "max_peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
    }
    if all("in_process_seconds" in run for run in runs):
        inner = statistics.median(run["in_process_seconds"] for run in runs)
        summary["in_process_seconds"] = inner
    return summary


def measure_size(rows: int, repeats: int, work: Path, run_dir: Path):
    print(f"{rows:,} rows: generating the raw CSV", flush=True)
    results = {"generation": summarise(rows, [generate(rows, work)])}
    runs = repeated("preprocessing", repeats, lambda: preprocess(rows, work))
    results["preprocessing"] = summarise(rows, runs)
    source = predict_input(rows, work)
    runs = repeated("predict", repeats, lambda: predict(run_dir, source, work))
    results["predict"] = summarise(rows, runs)
    # This size's data (GBs at 10M rows) goes before the next size is generated.
    for path in [*work.glob("*.parquet"), *work.glob(f"data/*/{_data_glob(rows)}")]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return results


def repeated(step: str, repeats: int, run) -> List[Dict[str, Any]]:
    runs = []
    for _ in range(repeats):
        runs.append(run())
        print(f"  {step}: {runs[-1]}", flush=True)
    return runs


def main() -> None:
    args = parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="preprocess_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    try:
        run_dir = train_model(work)
        sizes = {}
        for rows in args.rows:
            repeats = args.large_repeats if rows >= LARGE_ROWS else args.repeats
            sizes[str(rows)] = measure_size(rows, repeats, work, run_dir)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    payload = {
        **run_record("preprocess_scale", load_before[0], args.label),
        "setup": {
            "data": "data=synthetic (8 numeric, 3 categorical, id, binary target)",
            "rows": args.rows,
            "repeats": args.repeats,
            "large_repeats": args.large_repeats,
            "peak_rss_tool": GNU_TIME if Path(GNU_TIME).is_file() else "getrusage",
        },
        "results": sizes,
        "target": target(sizes),
    }
    if args.baseline is not None:
        before = json.loads(args.baseline.read_text())
        keep = ("date", "label", "code", "load_average_1m", "results", "target")
        payload["baseline"] = {key: before.get(key) for key in keep}
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.out, args.name, payload, render_markdown)
    print(json.dumps(payload["target"], indent=2))


def target(sizes: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's target: peak RSS under 2 GiB at 10M rows (every step)."""
    measured_rows = str(TARGET_ROWS)
    out: Dict[str, Any] = {"peak_rss_mib_below": TARGET_PEAK_RSS_MIB}
    if measured_rows not in sizes:
        out["met"] = None
        out["note"] = f"not measured at {TARGET_ROWS:,} rows"
        return out
    peaks = {step: r["max_peak_rss_mib"] for step, r in sizes[measured_rows].items()}
    out["max_peak_rss_mib"] = peaks
    out["met"] = all(peak < TARGET_PEAK_RSS_MIB for peak in peaks.values())
    return out


def render_markdown(payload) -> str:
    machine, setup = payload["machine"], payload["setup"]
    load, code = payload["load_average_1m"], payload["code"]
    lines = [
        "# Out-of-core scaling: generation, preprocessing, predict",
        "",
        f"{payload['date']}, {machine['processor']}, {machine['platform']}, "
        f"{machine['cpu_count']} CPUs, {machine['memory_gib']} GiB, Python "
        f"{machine['python']}, pandas {payload['versions']['pandas']}, pyarrow "
        f"{payload['versions']['pyarrow']}; 1-minute load average "
        f"{load['start']:.1f} at the start, {load['end']:.1f} at the end "
        "(other work on the machine slows the timings, not the peak RSS).",
        "",
        f"Code: {payload['label'] or code['package']} (commit "
        f"{(code.get('commit') or 'unknown')[:10]}"
        f"{', with uncommitted changes' if code.get('dirty') else ''}).",
        "",
        f"{setup['data']}. Each step is its own process: seconds are wall-clock "
        "(interpreter start-up and imports included; the step's own log figure "
        "in brackets), rows/s divides by them; peak RSS from "
        f"{setup['peak_rss_tool']}. Median of {setup['repeats']} run(s), "
        f"{setup['large_repeats']} from {LARGE_ROWS:,} rows on; generation once.",
        "",
    ]
    lines += _table(payload["results"])
    lines += ["", _verdict(payload["target"])]
    baseline = payload.get("baseline")
    if baseline:
        lines += [
            "",
            f"## Before: {baseline['label'] or baseline['code']['package']}",
            "",
            f"Measured {baseline['date']} with the same script, 1-minute load "
            f"average {baseline['load_average_1m']['start']:.1f}.",
            "",
        ]
        lines += _table(baseline["results"])
        lines += ["", _verdict(baseline["target"])]
    return "\n".join(lines) + "\n"


def _table(results: Dict[str, Any]) -> List[str]:
    lines = [
        "| rows | step | seconds | rows/s | peak RSS (MiB) |",
        "|---:|---|---:|---:|---:|",
    ]
    for rows, steps in results.items():
        for step, result in steps.items():
            inner = result.get("in_process_seconds")
            seconds = f"{result['seconds']:.1f}" + (
                f" ({inner:.1f})" if inner is not None else ""
            )
            lines.append(
                f"| {int(rows):,} | {step} | {seconds} "
                f"| {result['rows_per_second']:,.0f} | {result['peak_rss_mib']:,.0f} |"
            )
    return lines


def _verdict(goal: Dict[str, Any]) -> str:
    verdict = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
    peaks = goal.get("max_peak_rss_mib")
    detail = (
        " (largest peaks: "
        + ", ".join(f"{step} {peak:,.0f} MiB" for step, peak in peaks.items())
        + ")"
        if peaks
        else ""
    )
    return (
        f"Target, peak RSS under {goal['peak_rss_mib_below']:,} MiB at "
        f"{TARGET_ROWS:,} rows: **{verdict}**{detail}."
    )


if __name__ == "__main__":
    main()
