"""Batch vs real-time inference: predict.py on a large file against the API.

    python -m benchmarks.inference_paths                     # 1M rows, 3 runs each
    python -m benchmarks.inference_paths --rows 20000 --repeats 1   # smoke size

Both paths score the same Telco churn model with the same `Predictor`:

- batch: `python predict.py` as a user runs it (its own process under
  `/usr/bin/time -v`), on `--rows` rows drawn with replacement from the Telco table
  (seeded), Parquet -> Parquet and CSV -> Parquet with the defaults (engine=auto:
  ONNX Runtime; reading + transform, forward and writing overlap in three
  stages, the forward pass on one chunk per core at once), and Parquet ->
  Parquet the
  earlier way (engine=torch, prefetch_chunks=0, batch_size=8192: the path
  and forward-pass size issue 15 was measured against) side by side, taking turns (each
  of `--repeats` rounds runs every path once, starting one path further on than
  the round before: with fewer rounds than paths some path never starts a round);
  issue 15's target is the default Parquet path's in-process rows/s over the
  earlier path's (>= 1.3x); wall seconds include
  start-up, the run's own figure (`prediction.json`, file read to file written)
  does not; the same default run on `--large-rows` rows shows start-up amortised;
- where the batch time goes: one in-process run of `predict_file` under cProfile
  (prefetch off, so every stage is in the profiled thread), grouped by stage
  (read, check + type, feature transform, model, output, write);
- real-time: the API figures of the serving load benchmark
  (`benchmarks/results/serve_load.json`, wrk against serve.py on loopback), and the
  in-process cost of the API's own path (`predict_records`) for one record.

Per-row cost = 1 / rows per second. Results go to
benchmarks/results/inference_paths.{json,md} with the machine and load average.
The model: `--run-dir`, else the serving benchmark's run, else a fresh
`python train.py` (the default Telco model) in the work dir.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

from benchmarks.common import (
    REPO,
    RESULTS,
    add_output_arguments,
    machine,
    round_order,
    write_results,
)
from benchmarks.processes import measured, predict_command, raw_csv_command
from modelsphere.core.provenance import package_versions

TARGET_ROWS_PER_SECOND = 500_000  # issue 7: predict.py Parquet -> Parquet, 1M rows
SINGLE_RECORD_CALLS = 2000
EARLIER_PATH = "parquet -> parquet, engine=torch, no prefetch"
# the path and forward-pass size (the default then) issue 15 was measured against
EARLIER_OPTIONS = ("engine=torch", "prefetch_chunks=0", "batch_size=8192")
# issue 15: the default path, in process, at >= this times the earlier one's rows/s
VS_EARLIER_GOAL = 1.3
# cProfile functions (file suffix, function name) -> stage of predict_file
STAGES = {
    "read (Parquet/CSV chunks)": [("table_io.py", "iter_table_chunks")],
    "check + type (clean_frame)": [("predictor.py", "prepare")],
    "feature transform": [("transform.py", "transform")],
    "model forward": [("engines.py", "__call__")],
    "outputs (labels, probabilities)": [("predictor.py", "_outputs")],
    "write (Parquet)": [("table_io.py", "write")],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--large-rows", type=int, default=10_000_000, help="0: skip the large run"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument(
        "--serve-results", type=Path, default=RESULTS / "serve_load.json"
    )
    parser.add_argument(
        "--train-override",
        action="append",
        default=[],
        help="an override for training the model when there is no --run-dir",
    )
    parser.add_argument(
        "--peak-results", type=Path, default=RESULTS / "train_throughput.json"
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    add_output_arguments(parser, "inference_paths")
    return parser.parse_args()


def run(command: List[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, **kwargs)


def model_run_dir(args, work: Path, serve: Optional[dict]) -> Path:
    if args.run_dir is not None:
        return args.run_dir
    if serve and Path(serve["setup"]["run_dir"]).is_dir():
        return Path(serve["setup"]["run_dir"])
    outputs = work / "outputs"
    overrides = [f"paths.outputs_dir={outputs}", f"paths.data_dir={work / 'data'}"]
    result = run([sys.executable, "train.py", *overrides, *args.train_override])
    if result.returncode != 0:
        sys.exit(f"training the model failed:\n{result.stderr[-3000:]}")
    return (outputs / "latest").resolve()


def telco_rows(rows: int, work: Path) -> Dict[str, Path]:
    """`rows` Telco records (features and id, no target) as Parquet and CSV."""
    result = run(raw_csv_command([f"paths.data_dir={work / 'data'}"]), check=True)
    import pandas as pd

    raw = pd.read_csv(result.stdout.strip().splitlines()[-1])
    table = raw.drop(columns=["churn"]).sample(n=rows, replace=True, random_state=0)
    paths = {"parquet": work / "input.parquet", "csv": work / "input.csv"}
    table.to_parquet(paths["parquet"], index=False, row_group_size=131_072)
    table.to_csv(paths["csv"], index=False)
    table.head(1).to_parquet(work / "one_row.parquet", index=False)
    return paths


def tiled_parquet(source: Path, rows: int, work: Path) -> Path:
    """`rows` rows: the input file repeated, written a row group at a time."""
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    path = work / "large.parquet"
    with pq.ParquetWriter(path, table.schema) as writer:
        written = 0
        while written < rows:
            part = table.slice(0, min(len(table), rows - written))
            writer.write_table(part, row_group_size=131_072)
            written += len(part)
    return path


def startup_cost(args, run_dir: Path, work: Path) -> Dict[str, Any]:
    """predict.py on a one-row file: the whole process is start-up (interpreter,
    imports, config, artifact), a floor under every run's wall time."""
    runs = [
        predict_once(run_dir, work / "one_row.parquet", work)
        for _ in range(args.repeats)
    ]
    seconds = statistics.median(r["seconds"] for r in runs)
    return {
        "runs": runs,
        "seconds": seconds,
        "rows_per_second_cap": args.rows / seconds,
    }


def predict_once(
    run_dir: Path, source: Path, work: Path, options: tuple = ()
) -> Dict[str, Any]:
    outputs = work / "predict_runs"
    command = predict_command(
        run_dir, source, work / "scored.parquet", outputs, *options
    )
    result = measured(command)
    summaries = sorted(outputs.glob("predict/*/prediction.json"))
    summary = json.loads(summaries[-1].read_text())
    shutil.rmtree(outputs)
    return {
        "seconds": result["process_seconds"],
        "in_process_seconds": summary["seconds"],
        "peak_rss_mib": result["peak_rss_mib"],
    }


def batch_path(
    args, run_dir: Path, source: Path, work: Path, options=(), rows=None
) -> Dict[str, Any]:
    rows = rows or args.rows
    runs = [predict_once(run_dir, source, work, options) for _ in range(args.repeats)]
    return batch_result(runs, rows, options)


def batch_paths_in_turns(
    args, run_dir: Path, paths: Dict[str, tuple], work: Path
) -> Dict[str, Dict[str, Any]]:
    """name -> (source, options): `--repeats` rounds in which each path runs
    once, each round starting one path further on, so a slower spell of these
    shared CPUs reaches every path alike (the ratios between them are the
    targets). Each run records its round and turn."""
    names = list(paths)
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in names}
    for round_index in range(args.repeats):
        for turn, name in enumerate(round_order(names, round_index)):
            source, options = paths[name]
            run = predict_once(run_dir, source, work, options)
            runs[name].append(dict(run, round=round_index, turn=turn))
    return {name: batch_result(runs[name], args.rows, paths[name][1]) for name in names}


def batch_result(runs: List[Dict[str, Any]], rows: int, options) -> Dict[str, Any]:
    seconds = statistics.median(r["seconds"] for r in runs)
    inner = statistics.median(r["in_process_seconds"] for r in runs)
    return {
        "rows": rows,
        "options": list(options),
        "runs": runs,
        "seconds": seconds,
        "in_process_seconds": inner,
        "rows_per_second": rows / seconds,
        "in_process_rows_per_second": rows / inner,
        "microseconds_per_row": seconds / rows * 1e6,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
    }


def profile_batch(run_dir: Path, source: Path, work: Path) -> Dict[str, Any]:
    """Seconds per stage of one in-process predict_file run (cProfile), with the
    default engine and the prefetch off (cProfile sees one thread only)."""
    from modelsphere.core.devices import select_device
    from modelsphere.inference.batch_predict import forward_plan, predict_file
    from modelsphere.inference.config import PredictAppConfig
    from modelsphere.inference.engines import resolve_engine
    from modelsphere.inference.predictor import Predictor

    device = select_device("cpu", amp=False)
    engine = resolve_engine("auto", device)
    _, threads = forward_plan(engine, prefetch_chunks=0)
    predictor = Predictor.from_run_dir(
        run_dir, device, PredictAppConfig.batch_size, engine, threads
    )
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    predict_file(
        predictor, source, work / "profiled.parquet", 65_536, prefetch_chunks=0
    )
    profile.disable()
    total = time.perf_counter() - started
    stats = pstats.Stats(profile).stats
    stages = {}
    for stage, functions in STAGES.items():
        stages[stage] = sum(
            entry[3]  # cumulative seconds
            for (path, _, name), entry in stats.items()
            if any(path.endswith(f) and name == n for f, n in functions)
        )
    stages["other"] = max(0.0, total - sum(stages.values()))
    return {"seconds": total, "stages": stages}


def single_record_cost(run_dir: Path, source: Path) -> Dict[str, Any]:
    """Microseconds of the API's in-process path for one record, per engine."""
    import pandas as pd

    from modelsphere.core.devices import select_device
    from modelsphere.inference.predictor import Predictor

    record = pd.read_parquet(source).head(1).to_dict("records")
    costs = {}
    for engine in ("torch", "onnx"):
        predictor = Predictor.from_run_dir(
            run_dir, select_device("cpu", amp=False), 8192, engine
        )
        predictor.predict_records(record)  # warm-up
        times = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(SINGLE_RECORD_CALLS):
                predictor.predict_records(record)
            times.append((time.perf_counter() - started) / SINGLE_RECORD_CALLS)
        costs[engine] = {"microseconds_per_record": statistics.median(times) * 1e6}
    return costs


def forward_floor(run_dir: Path, rows: int, peak_file: Path) -> Dict[str, Any]:
    """The least time the model's matrix products can take on this machine:
    2 x multiply-adds per row x rows / the matmul peak of train_throughput.json.
    The multiply-adds are those of the Linear layers of the module predict.py
    runs (the artifact's inference form)."""
    import torch

    from modelsphere.models.artifact import load_artifact

    artifact = load_artifact(run_dir)
    model = artifact.build(torch.device("cpu"))
    multiply_adds = sum(
        module.in_features * module.out_features
        for module in model.modules()
        if isinstance(module, torch.nn.Linear)
    )
    floor: Dict[str, Any] = {
        "flops_per_row": 2 * multiply_adds,
        "architecture": artifact.spec.to_dict(),
        "inference_form": type(model).__name__,
    }
    if peak_file.is_file():
        peak = json.loads(peak_file.read_text()).get("matmul_peak")
        if peak:
            floor["matmul_peak_gflops"] = peak["gflops"]
            floor["seconds"] = 2 * multiply_adds * rows / (peak["gflops"] * 1e9)
    return floor


def api_figures(serve: Optional[dict]) -> Optional[Dict[str, Any]]:
    """The serving benchmark's best cells: single-row latency and throughput,
    64-row throughput, per engine and worker count."""
    if not serve:
        return None
    figures = {}
    for result in serve["results"]:
        key = f"{result['engine']}, {result['workers']} worker(s)"
        cells = {(c["rows"], c["concurrency"]): c for c in result["cells"]}
        single = max(
            (c for c in result["cells"] if c["rows"] == 1),
            key=lambda c: c["rows_per_second"],
        )
        batch = max(
            (c for c in result["cells"] if c["rows"] > 1),
            key=lambda c: c["rows_per_second"],
        )
        alone = cells.get((1, 1))
        figures[key] = {
            "single_row_p50_ms_alone": alone["latency_ms"]["p50"] if alone else None,
            "single_row_p99_ms_alone": alone["latency_ms"]["p99"] if alone else None,
            "single_row_best_rows_per_second": single["rows_per_second"],
            "single_row_best_concurrency": single["concurrency"],
            "batched_rows_per_request": batch["rows"],
            "batched_best_rows_per_second": batch["rows_per_second"],
            "microseconds_per_row_single": 1e6 / single["rows_per_second"],
            "microseconds_per_row_batched": 1e6 / batch["rows_per_second"],
        }
    return {"date": serve["date"], "endpoint": serve["setup"]["endpoint"], **figures}


def main() -> None:
    args = parse_args()
    serve = None
    if args.serve_results.is_file():
        serve = json.loads(args.serve_results.read_text())
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="inference_paths_"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    try:
        source_run = model_run_dir(args, work, serve)
        # A private copy without a cached ONNX graph, so the first run exports.
        run_dir = work / "model"
        shutil.copytree(source_run, run_dir, dirs_exist_ok=True)
        (run_dir / "model.onnx").unlink(missing_ok=True)
        inputs = telco_rows(args.rows, work)
        export = predict_once(run_dir, work / "one_row.parquet", work)  # caches ONNX
        paths = {f"{fmt} -> parquet": (source, ()) for fmt, source in inputs.items()}
        paths[EARLIER_PATH] = (inputs["parquet"], EARLIER_OPTIONS)
        batch = batch_paths_in_turns(args, run_dir, paths, work)
        for name, result in batch.items():
            print(f"predict.py {name}: {result}")
        large = None
        if args.large_rows:
            source = tiled_parquet(inputs["parquet"], args.large_rows, work)
            large = batch_path(args, run_dir, source, work, rows=args.large_rows)
            print(f"predict.py on {args.large_rows:,} rows: {large}")
        startup = startup_cost(args, run_dir, work)
        profile = profile_batch(run_dir, inputs["parquet"], work)
        record = single_record_cost(run_dir, inputs["parquet"])
        floor = forward_floor(run_dir, args.rows, args.peak_results)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    parquet = batch["parquet -> parquet"]
    payload = {
        "benchmark": "inference_paths",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": package_versions(),
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "setup": {
            "rows": args.rows,
            "repeats": args.repeats,
            "run_dir": str(source_run),
            "input": "Telco churn records drawn with replacement (seed 0)",
        },
        "batch": batch,
        "large": large,
        "first_run_seconds_with_onnx_export": export["seconds"],
        "startup": startup,
        "batch_profile": profile,
        "model_forward_floor": floor,
        "single_record_in_process": record,
        "api": api_figures(serve),
        "target": {
            "predict_parquet_rows_per_second_at_least": TARGET_ROWS_PER_SECOND,
            "value": parquet["rows_per_second"],
            "in_process_value": parquet["in_process_rows_per_second"],
            "met": parquet["rows_per_second"] >= TARGET_ROWS_PER_SECOND,
            "in_process_met": (
                parquet["in_process_rows_per_second"] >= TARGET_ROWS_PER_SECOND
            ),
        },
        "vs_earlier_path": vs_earlier_path(batch),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.out, args.name, payload, render_markdown)
    print(json.dumps(payload["target"], indent=2))


def vs_earlier_path(batch: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Issue 15's target: the default Parquet -> Parquet path's in-process
    rows/s over the earlier path's, measured in the same rounds."""
    ratio = (
        batch["parquet -> parquet"]["in_process_rows_per_second"]
        / batch[EARLIER_PATH]["in_process_rows_per_second"]
    )
    return {"value": ratio, "goal": VS_EARLIER_GOAL, "met": ratio >= VS_EARLIER_GOAL}


def render_markdown(payload: Dict[str, Any]) -> str:
    machine, setup, load = (
        payload["machine"],
        payload["setup"],
        payload["load_average_1m"],
    )
    packages = payload["versions"]
    lines = [
        "# Batch vs real-time inference",
        "",
        f"{payload['date']}, {machine['processor']}, {machine['platform']}, "
        f"{machine['cpu_count']} CPUs, Python {machine['python']}, torch "
        f"{packages['torch']}, pyarrow {packages['pyarrow']}; 1-minute load average "
        f"{load['start']:.1f} at the start, {load['end']:.1f} at the end (other "
        "work on the machine slows every figure).",
        "",
        f"Model: `{setup['run_dir']}`. Input: {setup['rows']:,} {setup['input']}.",
        "",
        "## Batch: predict.py",
        "",
        f"Median of {setup['repeats']} runs, each its own process, the paths "
        "taking turns (each round runs every path once, starting one path further "
        "on than the round before; wall seconds "
        "include interpreter start-up and imports; in-process seconds are the run's "
        "own figure, from reading the first chunk to the output file renamed into "
        "place). The defaults: engine=auto (ONNX Runtime on the CPU) and three "
        "overlapping stages, each in its own thread (read + type + transform, "
        "forward pass, labels + write), the forward pass on one chunk per core at "
        "once, each on one thread, 2,048 rows per pass; the last row is the "
        "earlier path, eager PyTorch one stage after the other, 8,192 rows per "
        "pass (the default then).",
        "",
        "| input -> output | seconds | rows/s | us/row | in-process s "
        "| in-process rows/s | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in payload["batch"].items():
        peak = result["peak_rss_mib"]
        lines.append(
            f"| {name} | {result['seconds']:.2f} | {result['rows_per_second']:,.0f} "
            f"| {result['microseconds_per_row']:.2f} "
            f"| {result['in_process_seconds']:.2f} "
            f"| {result['in_process_rows_per_second']:,.0f} "
            f"| {'n/a' if peak is None else f'{peak:,.0f}'} |"
        )
    large = payload.get("large")
    if large:
        lines += [
            "",
            f"The same default run on {large['rows']:,} rows (the file repeated): "
            f"{large['seconds']:.1f} s = {large['rows_per_second']:,.0f} rows/s end "
            f"to end, {large['in_process_rows_per_second']:,.0f} in process, peak RSS "
            f"{large['peak_rss_mib'] or 0:,.0f} MiB: start-up amortised.",
        ]
    lines += [
        "",
        f"The first run on a new model also exports it to ONNX and caches the graph "
        f"beside the weights (`model.onnx`): that one-row run took "
        f"{payload['first_run_seconds_with_onnx_export']:.1f} s.",
    ]
    profile = payload["batch_profile"]
    lines += [
        "",
        f"Where the Parquet -> Parquet time goes (one in-process run under cProfile "
        f"with the prefetch off, so the stages add up rather than overlap, "
        f"{profile['seconds']:.2f} s; profiling adds a little):",
        "",
        "| stage | seconds | share |",
        "|---|---:|---:|",
    ]
    for stage, seconds in profile["stages"].items():
        lines.append(
            f"| {stage} | {seconds:.2f} | {seconds / profile['seconds']:.0%} |"
        )
    floor = payload["model_forward_floor"]
    if "seconds" in floor:
        lines += [
            "",
            f"The model's matrix products alone are {floor['flops_per_row']:,} FLOPs "
            f"per row: at the matmul peak of train_throughput.json "
            f"({floor['matmul_peak_gflops']:,.1f} GFLOP/s) {setup['rows']:,} rows "
            f"need at least {floor['seconds']:.2f} s, i.e. at most "
            f"{setup['rows'] / floor['seconds']:,.0f} rows/s for this model on this "
            "machine before reading, typing or writing a single value.",
        ]
    startup = payload["startup"]
    lines += [
        "",
        f"Start-up alone (predict.py on a one-row file, median): "
        f"{startup['seconds']:.2f} s, so no run of {setup['rows']:,} rows can beat "
        f"{startup['rows_per_second_cap']:,.0f} rows/s end to end on this machine, "
        "however fast the scoring.",
    ]
    target = payload["target"]
    verdict = "met" if target["met"] else "NOT met"
    inner = "met" if target.get("in_process_met") else "NOT met"
    lines += [
        "",
        f"Target (issue 7): predict.py Parquet -> Parquet at >= "
        f"{target['predict_parquet_rows_per_second_at_least']:,} rows/s. File read "
        f"to file written (the run's own figure): **{inner}** "
        f"({target['in_process_value']:,.0f} rows/s). Whole process, start-up "
        f"included: **{verdict}** ({target['value']:,.0f} rows/s).",
    ]
    earlier = payload.get("vs_earlier_path")
    if earlier:
        lines += [
            "",
            f"Target (issue 15): the default path, in process, at >= "
            f"{earlier['goal']:g}x the earlier path's rows/s, in the same rounds: "
            f"**{'met' if earlier['met'] else 'NOT met'}** ({earlier['value']:.2f}x).",
        ]
    lines += [
        "",
        "## Real-time: the API",
        "",
    ]
    record = payload["single_record_in_process"]
    lines.append(
        "In process, the API's own path (`predict_records`, no HTTP) for one record: "
        + ", ".join(
            f"{engine} {cost['microseconds_per_record']:.0f} us"
            for engine, cost in record.items()
        )
        + "."
    )
    api = payload["api"]
    if api is None:
        lines += ["", "Over HTTP: not measured (no serve_load.json)."]
    else:
        lines += [
            "",
            f"Over HTTP (`{api['endpoint']}`, from the serving load benchmark of "
            f"{api['date']}):",
            "",
            "| engine, workers | 1-row p50 / p99 ms (alone) | 1-row rows/s (best) "
            "| us/row | batched rows/s (rows/request) | us/row |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, cell in api.items():
            if key in ("date", "endpoint"):
                continue
            lines.append(
                f"| {key} | {cell['single_row_p50_ms_alone']} / "
                f"{cell['single_row_p99_ms_alone']} "
                f"| {cell['single_row_best_rows_per_second']:,.0f} "
                f"| {cell['microseconds_per_row_single']:.0f} "
                f"| {cell['batched_best_rows_per_second']:,.0f} "
                f"({cell['batched_rows_per_request']}) "
                f"| {cell['microseconds_per_row_batched']:.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
